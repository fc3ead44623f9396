# cython: language_level=3, boundscheck=False, cdivision=True
"""The compiled core of the socket loop: server/loop.py's loop, with libzmq called from C.

:class:`CompiledServer` is :class:`server.loop.Server` with the
receive-handle-send loop compiled. It drives the very ROUTER socket pyzmq
made (``socket.underlying``), so CURVE, the ZAP handler, the high-water marks
and the socket options set in Python all hold. Where the Python loop makes a
pyzmq call per frame, this one calls libzmq: per request, no Python call
receives or sends.

For the commonest requests the Python :class:`~server.handler.Handler` is
not entered either: a frame that is exactly ``["get", key]``, ``["set", key,
value]``, ``["mget", [key, ...]]`` or ``["mset", {key: value, ...}]`` (the
writes optionally with ``{"rid": rid}``), or a ``batch`` of only those, its
strings valid UTF-8 and within the limits, is decoded here, run against the
store through its methods (the table is still Python objects:
server/store.py) and answered with the bytes the Handler would give, its op
counted as the Handler counts it. What the reply limits may change (a get
of a long value, an mget with a large reply, a batch element past the
limit) is left to the Handler's own code. Any other frame, and every frame
when a data directory or a memory cap takes part (a write must be
journaled, memory counted), goes to the Handler as in the Python loop.
tests/test_cores.py compares the two cores' replies byte for byte.

libzmq is the one pyzmq loaded: its functions are looked up (``dlsym``)
through pyzmq's own extension module, so nothing is linked at build time and
no ``zmq.h`` is needed; the handful used are declared below as libzmq 4
defines them. If they cannot be found, importing this module fails and the
server runs the Python core (server/core.py).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.errno cimport EAGAIN, EINTR
from libc.string cimport memcmp, memcpy

import importlib
import time

import zmq

from .loop import (
    LINGER_MS,
    MAX_BATCH_REQUESTS,
    MAX_BATCH_S,
    POLL_INTERVAL_S,
    STOP_DRAIN_S,
    Server,
    encode_reply,
)
from .output import LargeReply

from . import handler as _handler
from .loop import _SMALL

# common/ is the checkout's top-level package, memlookup.common installed: no relative import reaches it.
_root = __name__.rpartition(".")[0].rpartition(".")[0]
_protocol = importlib.import_module(f"{_root}.common.protocol" if _root else "common.protocol")


cdef extern from "<dlfcn.h>" nogil:
    void* dlopen(const char* filename, int flags)
    void* dlsym(void* handle, const char* symbol)
    int RTLD_NOW
    int RTLD_NOLOAD

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL


# libzmq 4's opaque message: 64 bytes, aligned as a pointer.
cdef union zmq_msg_t:
    unsigned char bytes[64]
    void* align

ctypedef int (*msg_init_f)(zmq_msg_t*) noexcept nogil
ctypedef int (*msg_recv_f)(zmq_msg_t*, void*, int) noexcept nogil
ctypedef int (*msg_close_f)(zmq_msg_t*) noexcept nogil
ctypedef void* (*msg_data_f)(zmq_msg_t*) noexcept nogil
ctypedef size_t (*msg_size_f)(zmq_msg_t*) noexcept nogil
ctypedef int (*msg_more_f)(zmq_msg_t*) noexcept nogil
ctypedef int (*msg_get_f)(zmq_msg_t*, int) noexcept nogil
ctypedef int (*send_f)(void*, const void*, size_t, int) noexcept nogil
ctypedef int (*getsockopt_f)(void*, int, void*, size_t*) noexcept nogil
ctypedef int (*errno_f)() noexcept nogil

cdef msg_init_f zmq_msg_init
cdef msg_recv_f zmq_msg_recv
cdef msg_close_f zmq_msg_close
cdef msg_data_f zmq_msg_data
cdef msg_size_f zmq_msg_size
cdef msg_more_f zmq_msg_more
cdef msg_get_f zmq_msg_get
cdef send_f zmq_send
cdef getsockopt_f zmq_getsockopt
cdef errno_f zmq_errno

# zmq.h's values (stable across libzmq 4).
cdef enum:
    ZMQ_DONTWAIT = 1
    ZMQ_SNDMORE = 2
    ZMQ_SRCFD = 2
    ZMQ_EVENTS = 15
    ZMQ_POLLIN = 1


cdef void* _symbol(void* library, const char* name) except NULL:
    found = dlsym(library, name)
    if found == NULL:
        raise ImportError(f"libzmq has no {name.decode()}")
    return found


cdef _load_libzmq():
    """Find libzmq's functions in the instance pyzmq loaded (its extension module depends on it)."""
    global zmq_msg_init, zmq_msg_recv, zmq_msg_close, zmq_msg_data, zmq_msg_size, zmq_msg_more, zmq_msg_get
    global zmq_send, zmq_getsockopt, zmq_errno
    if zmq.zmq_version_info()[0] != 4:
        raise ImportError(f"the compiled core needs libzmq 4, pyzmq has {zmq.zmq_version()}")
    try:
        from zmq.backend.cython import _zmq as backend
    except ImportError as exc:
        raise ImportError(f"pyzmq has no Cython backend to find libzmq through: {exc}") from None
    library = dlopen(backend.__file__.encode(), RTLD_NOW | RTLD_NOLOAD)
    if library == NULL:
        raise ImportError(f"cannot find the loaded {backend.__file__}")
    zmq_msg_init = <msg_init_f>_symbol(library, b"zmq_msg_init")
    zmq_msg_recv = <msg_recv_f>_symbol(library, b"zmq_msg_recv")
    zmq_msg_close = <msg_close_f>_symbol(library, b"zmq_msg_close")
    zmq_msg_data = <msg_data_f>_symbol(library, b"zmq_msg_data")
    zmq_msg_size = <msg_size_f>_symbol(library, b"zmq_msg_size")
    zmq_msg_more = <msg_more_f>_symbol(library, b"zmq_msg_more")
    zmq_msg_get = <msg_get_f>_symbol(library, b"zmq_msg_get")
    zmq_send = <send_f>_symbol(library, b"zmq_send")
    zmq_getsockopt = <getsockopt_f>_symbol(library, b"zmq_getsockopt")
    zmq_errno = <errno_f>_symbol(library, b"zmq_errno")


_load_libzmq()

cdef bytes _GET_NIL = b"\x92\x00\xc0"
cdef bytes _TRUE = b"\x92\x00\xc3"
cdef bytes _FALSE = b"\x92\x00\xc2"

#: What ``rid_at`` gives for a write without an options map.
cdef object _NO_RID = object()


# -- msgpack, the few shapes the fast paths read and write --------------------

cdef inline Py_ssize_t _header(const unsigned char* p, Py_ssize_t end, Py_ssize_t* pos,
                               unsigned char fix_low, unsigned char fix_bits, unsigned char first) noexcept:
    """The length in a str/array/map header at ``pos`` (advanced past it), or -1 if it is not one.

    ``fix_low``: the first fix byte (0xa0 str, 0x90 array, 0x80 map), ``fix_bits`` its length bits;
    ``first``: the first sized byte (0xd9 str8, 0xdc array16, 0xde map16).
    """
    cdef Py_ssize_t at = pos[0]
    cdef unsigned char b
    if at >= end:
        return -1
    b = p[at]
    if fix_low <= b <= fix_low + fix_bits:
        pos[0] = at + 1
        return b - fix_low
    if first == 0xd9 and b == 0xd9:
        if at + 2 > end:
            return -1
        pos[0] = at + 2
        return p[at + 1]
    if b == first + (1 if first == 0xd9 else 0):
        if at + 3 > end:
            return -1
        pos[0] = at + 3
        return (<Py_ssize_t>p[at + 1] << 8) | p[at + 2]
    if b == first + (2 if first == 0xd9 else 1):
        if at + 5 > end:
            return -1
        pos[0] = at + 5
        return ((<Py_ssize_t>p[at + 1] << 24) | (<Py_ssize_t>p[at + 2] << 16)
                | (<Py_ssize_t>p[at + 3] << 8) | p[at + 4])
    return -1


cdef inline Py_ssize_t _str(const unsigned char* p, Py_ssize_t end, Py_ssize_t* pos) noexcept:
    """The byte length of the str at ``pos``, whose bytes start at the new ``pos``; -1 if none."""
    cdef Py_ssize_t length = _header(p, end, pos, 0xa0, 0x1f, 0xd9)
    if length < 0 or pos[0] + length > end:
        return -1
    return length


cdef inline object _text(const unsigned char* p, Py_ssize_t* pos, Py_ssize_t length):
    """The str of ``length`` UTF-8 bytes at ``pos`` (advanced past it), or None if they are not UTF-8."""
    try:
        text = PyUnicode_DecodeUTF8(<const char*>p + pos[0], length, NULL)
    except UnicodeDecodeError:
        return None
    pos[0] += length
    return text


cdef inline Py_ssize_t _str_header_bytes(Py_ssize_t length) noexcept:
    return 1 if length < 32 else 2 if length < 0x100 else 3 if length < 0x10000 else 5


cdef inline Py_ssize_t _array_header_bytes(Py_ssize_t length) noexcept:
    return 1 if length < 16 else 3 if length < 0x10000 else 5


cdef inline unsigned char* _put_header(unsigned char* out, Py_ssize_t length, Py_ssize_t header_bytes,
                                       unsigned char fix, unsigned char sized) noexcept:
    """Write a header as msgpack's Packer does (the shortest form); ``sized`` is the 16-bit form's byte."""
    if header_bytes == 1:
        out[0] = fix | <unsigned char>length
    elif header_bytes == 2:
        out[0] = 0xd9
        out[1] = <unsigned char>length
    elif header_bytes == 3:
        out[0] = sized
        out[1] = <unsigned char>(length >> 8)
        out[2] = <unsigned char>length
    else:
        out[0] = sized + 1
        out[1] = <unsigned char>(length >> 24)
        out[2] = <unsigned char>(length >> 16)
        out[3] = <unsigned char>(length >> 8)
        out[4] = <unsigned char>length
    return out + header_bytes


cdef bytes _ok_values(list values):
    """``ok(values)`` for a list of str or None, as the Handler's packer builds it."""
    cdef Py_ssize_t count = len(values), size = 2 + _array_header_bytes(count), length, i
    cdef const char* utf8
    for value in values:
        if value is None:
            size += 1
        else:
            PyUnicode_AsUTF8AndSize(value, &length)
            size += _str_header_bytes(length) + length
    reply = PyBytes_FromStringAndSize(NULL, size)
    cdef unsigned char* out = <unsigned char*>PyBytes_AS_STRING(reply)
    out[0] = 0x92
    out[1] = 0x00
    out = _put_header(out + 2, count, _array_header_bytes(count), 0x90, 0xdc)
    for i in range(count):
        value = values[i]
        if value is None:
            out[0] = 0xc0
            out += 1
        else:
            utf8 = PyUnicode_AsUTF8AndSize(value, &length)
            out = _put_header(out, length, _str_header_bytes(length), 0xa0, 0xda)
            memcpy(out, utf8, length)
            out += length
    return reply


cdef bytes _ok_text(str value):
    """``ok(value)`` for one str."""
    cdef Py_ssize_t length
    cdef const char* utf8 = PyUnicode_AsUTF8AndSize(value, &length)
    cdef Py_ssize_t header_bytes = _str_header_bytes(length)
    reply = PyBytes_FromStringAndSize(NULL, 2 + header_bytes + length)
    cdef unsigned char* out = <unsigned char*>PyBytes_AS_STRING(reply)
    out[0] = 0x92
    out[1] = 0x00
    out = _put_header(out + 2, length, header_bytes, 0xa0, 0xda)
    memcpy(out, utf8, length)
    return reply


# -- the loop ----------------------------------------------------------------

cdef class _Core:
    """The compiled loop of one :class:`CompiledServer`, and its fast paths."""

    cdef void* sock
    cdef int last_fd
    cdef object server, socket, hooks, output, handle, handler, store, op_counts, replies, remember
    cdef object op_set, op_mget, op_mset
    cdef object not_run
    cdef bint fast
    cdef Py_ssize_t max_key_bytes, max_value_bytes, max_batch_keys, max_rid_bytes, small_bytes, unchecked_chars

    def __init__(self, server, handler, Py_ssize_t small_bytes):
        self.server = server
        self.socket = server.socket
        self.sock = <void*><size_t>server.socket.underlying
        self.hooks = server.hooks
        self.output = server.output
        self.handle = server.hooks.handle
        self.last_fd = -1
        self.small_bytes = small_bytes
        self.fast = handler is not None
        if handler is not None:
            self.handler = handler
            self.store = handler.store
            self.op_counts = handler.op_counts
            self.replies = handler.replies
            self.remember = handler.replies.remember
            self.op_set, self.op_mget, self.op_mset = handler.op_set, handler.op_mget, handler.op_mset
            self.max_key_bytes = handler.limits.max_key_bytes
            self.max_value_bytes = handler.limits.max_value_bytes
            self.max_batch_keys = handler.limits.max_batch_keys
            # A rid of at most this many bytes has at most MAX_RID_CHARS characters.
            self.max_rid_bytes = _handler.MAX_RID_CHARS
            # Longer values make replies the Handler checks against the reply limit.
            self.unchecked_chars = _handler._UNCHECKED_CHARS
            self.not_run = _handler.NOT_RUN

    # -- receiving and sending

    cdef list recv_message(self, int flags):
        """One whole message as bytes frames, or None when none came (a timeout, or a signal)."""
        cdef zmq_msg_t msg
        cdef int rc, error
        cdef void* sock = self.sock
        cdef list frames = []
        while True:
            zmq_msg_init(&msg)
            if flags:
                rc = zmq_msg_recv(&msg, sock, flags)
            else:
                with nogil:
                    rc = zmq_msg_recv(&msg, sock, flags)
            if rc < 0:
                error = zmq_errno()
                zmq_msg_close(&msg)
                if error == EAGAIN:
                    return None
                if error == EINTR:
                    PyErr_CheckSignals()
                    return None
                raise zmq.ZMQError(error)
            frames.append(PyBytes_FromStringAndSize(<char*>zmq_msg_data(&msg), zmq_msg_size(&msg)))
            if not zmq_msg_more(&msg):
                # The connection it came in on, for a large reply (server/output.py).
                self.last_fd = zmq_msg_get(&msg, ZMQ_SRCFD)
                zmq_msg_close(&msg)
                return frames
            zmq_msg_close(&msg)

    cdef int send(self, object data, int flags) except -1:
        cdef const char* buffer
        cdef Py_ssize_t size
        if type(data) is bytes:
            buffer, size = PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)
        elif type(data) is bytearray:  # a reply persistence holds until its batch is durable
            buffer, size = PyByteArray_AS_STRING(data), PyByteArray_GET_SIZE(data)
        else:
            data = bytes(data)
            buffer, size = PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)
        if zmq_send(self.sock, buffer, size, flags) < 0:
            raise zmq.ZMQError(zmq_errno())
        return 0

    cdef bint readable(self) except -1:
        cdef int events = 0
        cdef size_t size = sizeof(int)
        if zmq_getsockopt(self.sock, ZMQ_EVENTS, &events, &size) < 0:
            raise zmq.ZMQError(zmq_errno())
        return events & ZMQ_POLLIN

    # -- the loop (server/loop.py's Server.serve_forever and _answer_ready, statement for statement)

    def serve_forever(self):
        server, output = self.server, self.output
        stop = server._stop
        self.socket.setsockopt(zmq.RCVTIMEO, int(POLL_INTERVAL_S * 1000))
        interval_s = server.config.sweep_interval_s
        next_tick = time.monotonic() + interval_s
        try:
            while not stop.is_set():
                first = self.recv_message(0)
                if first is not None:
                    self.answer_ready(first)
                if output.busy:
                    output.reap()
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + interval_s
                    for task in self.hooks.periodic:
                        task()
            stop_by = time.monotonic() + STOP_DRAIN_S
            while time.monotonic() < stop_by:
                frames = self.recv_message(ZMQ_DONTWAIT)
                if frames is None:
                    break
                self.answer_ready(frames)
        finally:
            server.close(LINGER_MS)

    cdef answer_ready(self, list frames):
        hooks, output = self.hooks, self.output
        after_batch, batch_linger = hooks.after_batch, hooks.batch_linger
        started = time.perf_counter() if after_batch is not None else 0.0
        cdef Py_ssize_t tracked_bytes = output.tracked_bytes, max_reply_bytes = hooks.max_reply_bytes
        cdef Py_ssize_t small_bytes = self.small_bytes, count
        cdef list replies = []
        cdef double stop_by = 0.0
        while True:
            count = len(frames)
            if count == 3 and not frames[1]:  # a REQ peer: [identity, b"", body]
                frames[2] = self.answer(frames[2])
            elif count == 2 and frames[1]:  # a DEALER without envelope: [identity, body]
                frames[1] = self.answer(frames[1])
            else:
                frames = Server._answer(frames, self.handle)
            replies.append(frames)
            body = frames[-1]
            if len(body) > small_bytes:
                large = frames[-1] = LargeReply(body, self.last_fd, len(body) > tracked_bytes)
                if large.counted:
                    output.pending_bytes += large.size
                    if output.pending_bytes >= max_reply_bytes:
                        break
            if len(replies) >= MAX_BATCH_REQUESTS:
                break
            if len(replies) == 1:
                if batch_linger is None and not self.readable():
                    break
                stop_by = time.perf_counter() + MAX_BATCH_S
            elif time.perf_counter() >= stop_by:
                break
            frames = self.recv_message(ZMQ_DONTWAIT)
            if frames is None:
                if batch_linger is None:
                    break
                wait_ms = batch_linger(len(replies))
                if not wait_ms or not self.socket.poll(wait_ms, zmq.POLLIN):
                    break
                frames = self.recv_message(ZMQ_DONTWAIT)
                if frames is None:
                    break
        if hooks.before_reply is not None:
            hooks.before_reply(len(replies))
        if after_batch is not None:
            after_batch(len(replies), time.perf_counter() - started)
        muted = output.muted if output.has_muted else None
        cdef Py_ssize_t i, envelope
        for reply in replies:
            body = reply[-1]
            if muted is not None and muted(reply[0]):
                output.drop(body)
                continue
            try:
                envelope = len(reply) - 1
                for i in range(envelope):
                    self.send(reply[i], ZMQ_SNDMORE | ZMQ_DONTWAIT)
                if type(body) is LargeReply:
                    output.send(self.socket, reply[0], body)
                else:
                    self.send(body, ZMQ_DONTWAIT)
            except zmq.ZMQError as exc:
                output.refused(reply[0], body, exc)
                # Muted from now on, in this batch too: a later reply that found room would come after a gap.
                muted = output.muted if output.has_muted else None
        if output.busy:
            output.reap()

    # -- one request

    cdef object answer(self, bytes frame):
        """The reply to one request frame: from a fast path if it has one, else the Handler's."""
        if self.fast:
            try:
                reply = self.answer_fast(frame)
            except Exception:  # never expected; the Handler answers (and logs) whatever went wrong
                reply = None
            if reply is not None:
                return reply
        return self.handle(frame)

    cdef object answer_fast(self, bytes frame):
        """The reply to a request of a fast shape (see the module docstring), or None for the Handler."""
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(frame)
        cdef Py_ssize_t end = PyBytes_GET_SIZE(frame), pos = 0
        if end > 7 and memcmp(p, b"\x92\xa5batch", 7) == 0:
            return self.batch(p, end, 7)
        request = self.parse(p, end, &pos)
        if request is None or pos != end:
            return None
        return self.run(request)

    cdef tuple parse(self, const unsigned char* p, Py_ssize_t end, Py_ssize_t* pos):
        """The request at ``pos`` (advanced past it) if it has a fast shape: ``("get", key)``,
        ``("set", key, value, rid)``, ``("mget", keys)`` or ``("mset", pairs, rid)``; None if not.

        ``rid`` is a str, or _NO_RID for a write without an options map. Keys,
        values and rids are within their limits and valid UTF-8, so the
        Handler's checks would pass them.
        """
        cdef Py_ssize_t items, length, count, i
        if pos[0] >= end or p[pos[0]] < 0x92 or p[pos[0]] > 0x94:
            return None
        items = p[pos[0]] - 0x90
        pos[0] += 1
        length = _str(p, end, pos)
        if length == 3 and memcmp(p + pos[0], b"get", 3) == 0:
            pos[0] += 3
            key = self.key_at(p, end, pos) if items == 2 else None
            return None if key is None else ("get", key)
        if length == 3 and memcmp(p + pos[0], b"set", 3) == 0:
            pos[0] += 3
            key = self.key_at(p, end, pos) if items >= 3 else None
            if key is None:
                return None
            value = self.value_at(p, end, pos)
            if value is None:
                return None
            rid = self.rid_at(p, end, pos, items, 2)
            return None if rid is None else ("set", key, value, rid)
        if length == 4 and memcmp(p + pos[0], b"mget", 4) == 0:
            pos[0] += 4
            count = _header(p, end, pos, 0x90, 0x0f, 0xdc) if items == 2 else -1
            if count < 0 or count > self.max_batch_keys:
                return None
            keys = []
            for i in range(count):
                key = self.key_at(p, end, pos)
                if key is None:
                    return None
                keys.append(key)
            return ("mget", keys)
        if length == 4 and memcmp(p + pos[0], b"mset", 4) == 0:
            pos[0] += 4
            count = _header(p, end, pos, 0x80, 0x0f, 0xde)
            if count < 0 or count > self.max_batch_keys:
                return None
            pairs = {}
            for i in range(count):
                key = self.key_at(p, end, pos)
                if key is None:
                    return None
                value = self.value_at(p, end, pos)
                if value is None:
                    return None
                pairs[key] = value
            rid = self.rid_at(p, end, pos, items, 1)
            return None if rid is None else ("mset", pairs, rid)
        return None

    cdef object key_at(self, const unsigned char* p, Py_ssize_t end, Py_ssize_t* pos):
        """A key within the limit at ``pos``, or None."""
        cdef Py_ssize_t length = _str(p, end, pos)
        if length < 0 or length > self.max_key_bytes:
            return None
        return _text(p, pos, length)

    cdef object value_at(self, const unsigned char* p, Py_ssize_t end, Py_ssize_t* pos):
        """A value within the limit at ``pos``, or None."""
        cdef Py_ssize_t length = _str(p, end, pos)
        if length < 0 or length > self.max_value_bytes:
            return None
        return _text(p, pos, length)

    cdef object rid_at(self, const unsigned char* p, Py_ssize_t end, Py_ssize_t* pos, Py_ssize_t items,
                       Py_ssize_t arity):
        """The request's ``{"rid": rid}`` (a str), _NO_RID if it has no options map, None if it has another."""
        cdef Py_ssize_t length
        if items == arity + 1:
            return _NO_RID
        if items != arity + 2 or pos[0] >= end or p[pos[0]] != 0x81:
            return None
        pos[0] += 1
        length = _str(p, end, pos)
        if length != 3 or memcmp(p + pos[0], b"rid", 3) != 0:
            return None
        pos[0] += 3
        length = _str(p, end, pos)
        if length < 0 or length > self.max_rid_bytes:
            return None
        return _text(p, pos, length)

    cdef object run(self, tuple request):
        """The Handler's reply to a parsed request, or None where the Handler must answer it.

        That is: a get of a value that may make a large reply (the Handler
        checks it against the reply limit), an mget whose reply is large, a
        write that raised (the Handler runs it again and answers as it
        answers any failure).
        """
        op = request[0]
        if op == "get":
            try:
                value = self.store.get(request[1])
            except Exception:
                return None
            if value is None:
                reply = _GET_NIL
            elif type(value) is str and len(value) <= self.unchecked_chars:
                reply = _ok_text(value)
            else:
                return None
            self.op_counts["get"] += 1
            return reply
        if op == "set":
            return self.write("set", request[3], self.op_set, request[1], request[2])
        if op == "mset":
            return self.write("mset", request[2], self.op_mset, request[1])
        return self.mget(request[1])

    cdef object mget(self, list keys):
        try:
            values = self.op_mget(keys)
        except Exception:
            return None  # over the reply limit (or worse): the Handler answers it, reading the same keys again
        if self.handler._renew_packer:  # set for a large reply, which the packer does not build here
            self.handler._renew_packer = False
        if type(values) is not list:
            return None
        for value in values:
            if value is not None and type(value) is not str:
                return None
        self.op_counts["mget"] += 1
        return _ok_values(values)

    cdef object write(self, str op, object rid, object call, object first, object second=None):
        """The Handler's answer to a checked, plain write: counted, remembered by its rid.

        None if the write raised: the Handler then runs it again, and answers as it answers any failure.
        """
        cdef tuple remembered = None
        if rid is not _NO_RID:
            remembered = (op, rid)
            cached = self.replies.get(remembered)
            if cached is not None:
                self.op_counts[op] += 1
                return cached
        try:
            result = call(first) if second is None else call(first, second)
        except Exception:
            return None
        self.op_counts[op] += 1
        reply = _TRUE if result is True else _FALSE if result is False else encode_reply(0, result)
        if remembered is not None:
            self.remember(remembered, reply)
        return reply

    cdef object batch(self, const unsigned char* p, Py_ssize_t end, Py_ssize_t pos):
        """``["batch", [request, ...]]`` whose every element has a fast shape, as Handler.op_batch answers it.

        Every element is parsed before any runs: a batch with one other
        element (or over a limit) goes whole to the Handler. An element that
        the limits may change (see :meth:`run`) is handed to the Handler's
        ``answer_in_batch``, with the batch's room.
        """
        cdef Py_ssize_t count = _header(p, end, &pos, 0x90, 0x0f, 0xdc), i, limit, full, used = 0
        if count < 1 or count > self.max_batch_keys:
            return None
        cdef list requests = []
        for i in range(count):
            request = self.parse(p, end, &pos)
            if request is None:
                return None
            requests.append(request)
        if pos != end or (end > _protocol.ONE_SHOT_FRAME_BYTES and _values(requests) > max(
                _protocol.VALUES_PER_BATCH_KEY * self.max_batch_keys, end // _protocol.FRAME_BYTES_PER_VALUE)):
            return None  # the decoder refuses a large frame of more values (common/protocol.py)
        handler = self.handler
        limit = handler.batch_limit(count)
        if limit < self.small_bytes:
            return None
        full = limit - self.small_bytes
        self.op_counts["batch"] += 1
        cdef list replies = []
        for request in requests:
            if used > full:
                replies.append(self.not_run)
                continue
            op = request[0]
            reply = self.run(request) if op != "mget" else None
            if reply is None:
                reply = handler.answer_in_batch(_decoded(request), limit, used)
            used += len(reply)
            replies.append(reply)
        header = PyBytes_FromStringAndSize(NULL, 2 + _array_header_bytes(count))
        cdef unsigned char* out = <unsigned char*>PyBytes_AS_STRING(header)
        out[0] = 0x92
        out[1] = 0x00
        _put_header(out + 2, count, _array_header_bytes(count), 0x90, 0xdc)
        return header + b"".join(replies)


cdef Py_ssize_t _values(list requests):
    """The msgpack values a batch frame of ``requests`` holds, as the decoder counts them: each array's
    elements, twice each map's entries."""
    cdef Py_ssize_t values = 2 + len(requests)
    for request in requests:
        op = request[0]
        if op == "get":
            values += 2
        elif op == "mget":
            values += 2 + len(request[1])
        else:
            rid = request[3] if op == "set" else request[2]
            values += (3 if op == "set" else 2) + (0 if rid is _NO_RID else 3)
            if op == "mset":
                values += 2 * len(request[1])
    return values


cdef list _decoded(tuple request):
    """A parsed request as msgpack decodes its frame (for the Handler)."""
    op = request[0]
    if op == "get" or op == "mget":
        return [op, request[1]]
    if op == "set":
        decoded = [op, request[1], request[2]]
        rid = request[3]
    else:
        decoded = [op, request[1]]
        rid = request[2]
    if rid is not _NO_RID:
        decoded.append({"rid": rid})
    return decoded


class CompiledServer(Server):
    """:class:`server.loop.Server` with its loop compiled (see the module docstring).

    Args:
        handler: the Handler whose store the fast paths may use directly;
            None when every request must go through ``hooks.handle`` (a data
            directory journals writes, a memory cap counts them).
        Others as :class:`~server.loop.Server`.
    """

    def __init__(self, config, hooks, output, context=None, handler=None):
        super().__init__(config, hooks, output, context)
        self._core = _Core(self, handler, _SMALL)

    def serve_forever(self):
        """Answer requests until :meth:`stop`; then close the socket."""
        self._core.serve_forever()
