# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compact table: :class:`server.store.Store`'s behaviour with no Python object per key.

A key's record is a fixed 48-byte entry in one array of records (its hash,
lengths, deadline, version, flags and arena) and an entry in an arena
holding its key's and value's UTF-8 bytes. An open-addressing index (linear
probing, 4 bytes a slot, at most half full) maps a key to its record's
number. A tombstone is a record with the tombstone flag and no value.
Nothing here is a Python object until a method returns it.

Arenas are blocks of :data:`ARENA_BYTES` (1 MiB: glibc serves them with
mmap, so a freed one goes back to the system) filled by bumping. An entry is
a 4-byte header, the record's number, then the key's and value's bytes,
unaligned; the record points at the key's. A value rewritten with the same
length is rewritten in place; one of another length takes a new entry, and
the old one becomes garbage: its header becomes ``DEAD | its length``, so
an arena can be walked. An entry over an eighth of an arena takes a malloc
block of its own instead (the record's ``OWN_BLOCK`` flag), as every key did
before arenas. An arena left with only garbage is freed at once (the current
one, being filled, starts over). When the garbage of the arenas other than
the current one exceeds a :data:`GARBAGE_SHARE`-th (an eighth) of the live
entries' bytes, the one with the most garbage is compacted: walked, its live
entries copied to the current arena (their records then point there), and
freed. One arena at a time, a step per write: a write that frees an entry
walks on for a 64th of an arena (16 KiB) and nine times that entry's bytes (so, as the arena has
at least a ninth of garbage, it frees garbage as fast as writes make it),
never a whole arena at once. The arenas then hold about 9/8 of the live
entries' bytes, plus the current arena, the garbage of the one being
compacted, and the tail each filled arena left when the next entry did not
fit (under an eighth of it).

Scan positions are those of :class:`~server.store.Store` (``SCAN_POSITIONS``,
2**20): a key's position is the top 20 bits of its 32-bit hash (the top half
of Python's ``hash(key)``, randomized per process). A key's home slot is the
top bits of the same hash, so home slots are ordered by position whatever
the index's size. A step of a scan covers the positions of one home slot (or
one position, when there are more slots than positions): it reads from the
first home slot of its positions to the end of the run of occupied slots
after their last, and keeps the records whose position is in the step's
range. Linear probing puts a record at or after its home slot with no empty
slot between, so every record of the range is read; the cursor is a position,
not a slot, so it keeps its meaning when the index is resized between pages.
A key present for the whole scan is therefore returned exactly once.

Expiry and tombstone collection keep heaps of ``(deadline, record number)``
and ``(delete's ms, record number)``, as the Python table keeps heaps of keys;
an entry is stale when its record no longer has that deadline or tombstone.

``memory_bytes`` is what the table holds beyond an empty one: the live
arena entries' bytes, headers included (an arena's pages past its filled
part are not touched, so not resident), the own blocks' sizes as the
allocator reports them (``malloc_usable_size``, plus the 8 bytes of glibc's
header before each block), the records in use (the rest of the array, after
it doubled, is pages not touched yet; a freed record is not counted, as
garbage is not: the next new key takes it), the index, heaps and arena list
at their allocated sizes, the order of use under allkeys-lru, and the node
names of the versions other than this server's. It falls by a key's bytes
when the key goes, as the memory cap's eviction needs. Garbage is not in it:
what compaction lets it reach, an eighth of the live entries' bytes, is in
``slack_bytes``, which the memory cap adds (server/memory.py). When the last
record goes the arrays return to their first size and every arena is freed.

Snapshots and journals are read and written in bulk (``load_payloads``,
``snapshot_payloads``): a payload ``[entries, replies]`` of the current
formats (server/records.py) is read field by field from its bytes into the
records, with the hash of a pure-ASCII key computed from its bytes as
CPython hashes the str (``_Py_HashBytes`` over one byte a character; any
other key is made a str and hashed), and a snapshot's payloads are packed
from the records with the bytes ``msgpack.packb`` gives for
``records()``'s tuples. No Python object is made per key either way.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_Clear
from libc.stdint cimport INT64_MAX, int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset

import sys
import time

import msgpack

from . import store as _store
from .clock import HybridLogicalClock
from .glob_match import compile_glob
from .journaled_store import Journaled

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size)
    object PyUnicode_DecodeUTF8(const char* data, Py_ssize_t size, const char* errors)

cdef extern from "<malloc.h>" nogil:
    size_t malloc_usable_size(void* block)

NotAnInteger = _store.NotAnInteger
cdef object _ZERO_VERSION = (0, 0, "")
cdef uint32_t _SCAN_POSITIONS = _store.SCAN_POSITIONS
cdef int _POSITION_BITS = 20
assert _SCAN_POSITIONS == 1 << _POSITION_BITS

cdef enum:
    USED = 1
    TOMBSTONE = 2
    HAS_DEADLINE = 4
    IN_ORDER = 8  # linked in the order of use
    OWN_BLOCK = 16  # the bytes are a malloc block of their own, not an arena's entry

cdef extern from *:
    """
    #define MEMLOOKUP_EMPTY_SLOT 0xFFFFFFFFu
    """
    const uint32_t EMPTY "MEMLOOKUP_EMPTY_SLOT"  # a free slot in the index; no record's number
#: The index's first size (slots), and the records array's.
cdef int FIRST_SLOT_BITS = 4
cdef uint32_t FIRST_RECORDS = 8

cdef struct Rec:
    char* data          # the key's bytes, then the value's; NULL when the record is free
    double deadline     # wall-clock seconds, when HAS_DEADLINE
    int64_t ms          # the version: (ms, counter, nodes[node])
    uint32_t hash       # top half of hash(key); the next free record's number when free
    uint32_t key_len
    uint32_t value_len
    uint32_t node
    uint16_t counter
    uint8_t flags
    uint32_t arena      # the number of the arena holding the bytes (unless OWN_BLOCK)

cdef struct Arena:
    char* base          # NULL: this number holds no arena
    uint32_t used       # bytes filled from base: live entries and garbage
    uint32_t garbage    # bytes of dead entries

cdef struct Deadline:
    double deadline
    uint32_t record

cdef struct Buried:
    int64_t ms
    uint32_t record


#: What the memory cap adds per key beyond the table's own figure: what the
#: allocator cannot reuse of the arrays and large values' blocks freed under
#: churn (tests/test_security_memory.py's churn test holds RSS to it).
KEY_SLACK_BYTES = 16

#: An arena's size: records' key and value bytes are packed in arenas of this
#: many bytes (glibc mmaps a block this large, so a freed arena goes back to the system).
ARENA_BYTES = 1 << 20

#: Compaction holds the garbage of the arenas other than the current one to at
#: most a GARBAGE_SHARE-th of the live entries' bytes; the memory cap counts
#: that share as slack (:attr:`CompactStore.slack_bytes`).
GARBAGE_SHARE = 8

#: An entry's header: its record's number, or DEAD | its length once freed.
cdef Py_ssize_t ENTRY_HEADER_BYTES = 4
cdef uint32_t DEAD = 0x80000000

#: What a block costs besides its usable size: glibc's malloc keeps its size in the 8 bytes before it.
cdef size_t BLOCK_HEADER_BYTES = 8


cdef inline size_t _block_bytes(void* block) noexcept nogil:
    return malloc_usable_size(block) + BLOCK_HEADER_BYTES


cdef inline object _utf8(str text, const char** data, Py_ssize_t* size):
    """``text``'s UTF-8 bytes in ``data``/``size``; returns what must be kept alive while they are used.

    Lone surrogates (which only ``surrogatepass`` encodes) take a copy; other
    text is the str's own cached UTF-8.
    """
    data[0] = PyUnicode_AsUTF8AndSize(text, size)
    if data[0] != NULL:
        return None
    PyErr_Clear()
    encoded = text.encode("utf-8", "surrogatepass")
    data[0] = PyBytes_AS_STRING(encoded)
    size[0] = PyBytes_GET_SIZE(encoded)
    return encoded


cdef inline Py_ssize_t _utf8_size(str text) except -1:
    cdef const char* data
    cdef Py_ssize_t size
    keep = _utf8(text, &data, &size)
    return size


cdef inline Py_ssize_t _with_garbage_share(Py_ssize_t entry_bytes) noexcept:
    """``entry_bytes`` and the garbage compaction may leave for them (:data:`GARBAGE_SHARE`), rounded up."""
    return entry_bytes + (entry_bytes + GARBAGE_SHARE - 1) // GARBAGE_SHARE


cdef inline uint32_t _hash(str key) except? 0:
    return <uint32_t>((<uint64_t>hash(key)) >> 32)


cdef inline str _text(const char* data, Py_ssize_t size):
    return PyUnicode_DecodeUTF8(data, size, "surrogatepass")


cdef inline bint _before(Deadline a, Deadline b) noexcept nogil:
    """Heap order: by deadline, ties by record number (for keys set together, the order they were set in)."""
    return a.deadline < b.deadline or (a.deadline == b.deadline and a.record < b.record)


cdef inline void _heap_up_d(Deadline* heap, Py_ssize_t i) noexcept nogil:
    cdef Deadline item = heap[i]
    cdef Py_ssize_t parent
    while i > 0:
        parent = (i - 1) >> 1
        if not _before(item, heap[parent]):
            break
        heap[i] = heap[parent]
        i = parent
    heap[i] = item


cdef inline void _heap_down_d(Deadline* heap, Py_ssize_t size, Py_ssize_t i) noexcept nogil:
    cdef Deadline item = heap[i]
    cdef Py_ssize_t child
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and _before(heap[child + 1], heap[child]):
            child += 1
        if not _before(heap[child], item):
            break
        heap[i] = heap[child]
        i = child
    heap[i] = item


cdef inline void _heap_up_b(Buried* heap, Py_ssize_t i) noexcept nogil:
    cdef Buried item = heap[i]
    cdef Py_ssize_t parent
    while i > 0:
        parent = (i - 1) >> 1
        if heap[parent].ms <= item.ms:
            break
        heap[i] = heap[parent]
        i = parent
    heap[i] = item


cdef inline void _heap_down_b(Buried* heap, Py_ssize_t size, Py_ssize_t i) noexcept nogil:
    cdef Buried item = heap[i]
    cdef Py_ssize_t child
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and heap[child + 1].ms < heap[child].ms:
            child += 1
        if item.ms <= heap[child].ms:
            break
        heap[i] = heap[child]
        i = child
    heap[i] = item


# -- msgpack in bulk: the fields of snapshot and journal payloads ------------------------
#
# Payloads of the current formats (server/records.py) are ``[entries, replies]``,
# entries ``[key, value, version, deadline]``. CompactStore.load_payload reads the
# entries straight from the bytes and snapshot_payloads writes them, as
# msgpack.packb((entries, ())) would: these read and write one field each.
# Every read checks its bounds first: a payload cut short or of another shape
# raises ValueError, never reads past its end.

cdef extern from "Python.h":
    Py_hash_t _Py_HashBytes(const void* data, Py_ssize_t size)

cdef struct Reader:
    const uint8_t* data
    Py_ssize_t size
    Py_ssize_t at


cdef inline uint64_t _be(const uint8_t* p, int n) noexcept nogil:
    cdef uint64_t value = 0
    cdef int i
    for i in range(n):
        value = (value << 8) | p[i]
    return value


cdef inline void _put_be(uint8_t* p, uint64_t value, int n) noexcept nogil:
    cdef int i
    for i in range(n - 1, -1, -1):
        p[i] = value & 0xFF
        value >>= 8


cdef int _need(Reader* r, Py_ssize_t n) except -1:
    if n > r.size - r.at:
        raise ValueError(f"payload cut short: {n} bytes needed at byte {r.at} of {r.size}")
    return 0


cdef inline int _wrong(Reader* r, str what) except -1:
    raise ValueError(f"payload byte {r.at} (0x{r.data[r.at]:02x}) does not start {what}")


cdef Py_ssize_t _read_array(Reader* r) except -1:
    """The length of the array that starts here (fixarray, array 16, array 32)."""
    cdef uint8_t head
    cdef Py_ssize_t length
    _need(r, 1)
    head = r.data[r.at]
    if head & 0xF0 == 0x90:
        r.at += 1
        return head & 0x0F
    if head == 0xDC or head == 0xDD:
        _need(r, 3 if head == 0xDC else 5)
        length = _be(r.data + r.at + 1, 2 if head == 0xDC else 4)
        r.at += 3 if head == 0xDC else 5
        return length
    return _wrong(r, "an array")


cdef inline bint _read_nil(Reader* r) except -1:
    """True, past it, if a nil starts here."""
    _need(r, 1)
    if r.data[r.at] == 0xC0:
        r.at += 1
        return True
    return False


cdef const char* _read_str(Reader* r, Py_ssize_t* size) except NULL:
    """The bytes of the str that starts here (fixstr, str 8, 16, 32); its length in ``size``."""
    cdef uint8_t head
    cdef int length_bytes = 0
    cdef const char* text
    _need(r, 1)
    head = r.data[r.at]
    if head & 0xE0 == 0xA0:
        size[0], length_bytes = head & 0x1F, 0
    elif 0xD9 <= head <= 0xDB:
        length_bytes = 1 << (head - 0xD9)
        _need(r, 1 + length_bytes)
        size[0] = _be(r.data + r.at + 1, length_bytes)
    else:
        _wrong(r, "a str")
    r.at += 1 + length_bytes
    _need(r, size[0])
    text = <const char*>r.data + r.at
    r.at += size[0]
    return text


cdef int _read_int(Reader* r, int64_t* value) except -1:
    """The int that starts here, any of msgpack's int encodings; one beyond int64 is refused."""
    cdef uint8_t head
    cdef uint64_t raw
    cdef int width
    _need(r, 1)
    head = r.data[r.at]
    if head <= 0x7F or head >= 0xE0:
        value[0] = <int8_t>head
        r.at += 1
        return 0
    if 0xCC <= head <= 0xD3:
        width = 1 << ((head - 0xCC) & 3)
        _need(r, 1 + width)
        raw = _be(r.data + r.at + 1, width)
        if head <= 0xCF:  # unsigned
            if raw > <uint64_t>INT64_MAX:
                raise ValueError(f"payload byte {r.at}: an int beyond int64")
            value[0] = <int64_t>raw
        elif width == 1:
            value[0] = <int8_t>raw
        elif width == 2:
            value[0] = <int16_t>raw
        elif width == 4:
            value[0] = <int32_t>raw
        else:
            value[0] = <int64_t>raw
        r.at += 1 + width
        return 0
    return _wrong(r, "an int")


cdef int _read_deadline(Reader* r, bint* present, double* deadline) except -1:
    """A deadline: nil, a float (64 or 32 bits) or an int of any width."""
    cdef uint8_t head
    cdef uint64_t raw
    cdef uint32_t raw32
    cdef double wide
    cdef float narrow
    cdef int64_t whole
    present[0] = not _read_nil(r)
    if not present[0]:
        return 0
    head = r.data[r.at]
    if head == 0xCB or head == 0xCA:
        _need(r, 9 if head == 0xCB else 5)
        if head == 0xCB:
            raw = _be(r.data + r.at + 1, 8)
            memcpy(&wide, &raw, 8)
            deadline[0] = wide
        else:
            raw32 = <uint32_t>_be(r.data + r.at + 1, 4)
            memcpy(&narrow, &raw32, 4)
            deadline[0] = narrow
        r.at += 9 if head == 0xCB else 5
    elif head == 0xCF:
        _need(r, 9)
        deadline[0] = <double>_be(r.data + r.at + 1, 8)
        r.at += 9
    else:
        _read_int(r, &whole)
        deadline[0] = <double>whole
    return 0


cdef inline bint _ascii(const char* data, Py_ssize_t size) noexcept nogil:
    cdef uint8_t seen = 0
    cdef Py_ssize_t i
    for i in range(size):
        seen |= <uint8_t>data[i]
    return seen < 0x80


cdef uint32_t _hash_utf8(const char* key, Py_ssize_t size) except? 0:
    """``_hash(key)`` from its UTF-8 bytes (valid UTF-8, else UnicodeDecodeError, a ValueError).

    A pure-ASCII str hashes its bytes with ``_Py_HashBytes`` (CPython 3.11's
    unicode_hash: one byte a character); any other key is made a str.
    """
    if _ascii(key, size):
        return <uint32_t>((<uint64_t>_Py_HashBytes(key, size)) >> 32)
    return _hash(PyUnicode_DecodeUTF8(key, size, NULL))


cdef inline int _check_utf8(const char* text, Py_ssize_t size) except -1:
    """UnicodeDecodeError (a ValueError) unless ``text`` is valid UTF-8, as msgpack decodes a str."""
    if not _ascii(text, size):
        PyUnicode_DecodeUTF8(text, size, NULL)
    return 0


cdef inline int _check_packable(const char* text, Py_ssize_t size) except -1:
    """ValueError for the bytes of a lone surrogate (``surrogatepass``: ED A0..BF ..), which msgpack
    refuses to pack, as strict UTF-8 does: the table may hold them, a snapshot must not."""
    cdef Py_ssize_t i
    if _ascii(text, size):
        return 0
    for i in range(size - 1):
        if <uint8_t>text[i] == 0xED and <uint8_t>text[i + 1] >= 0xA0:
            raise ValueError("a key or value holds a lone surrogate, which UTF-8 (and msgpack) cannot encode")
    return 0


cdef inline Py_ssize_t _str_head_bytes(Py_ssize_t size) noexcept nogil:
    return 1 if size < 32 else 2 if size < 0x100 else 3 if size < 0x10000 else 5


cdef inline Py_ssize_t _int_bytes(int64_t value) noexcept nogil:
    if -32 <= value < 0x80:
        return 1
    if value > 0:
        return 2 if value <= 0xFF else 3 if value <= 0xFFFF else 5 if value <= <int64_t>0xFFFFFFFF else 9
    return 2 if value >= -0x80 else 3 if value >= -0x8000 else 5 if value >= -<int64_t>0x80000000 else 9


cdef inline uint8_t* _write_str(uint8_t* out, const char* text, Py_ssize_t size) noexcept nogil:
    if size < 32:
        out[0] = 0xA0 | size
        out += 1
    elif size < 0x100:
        out[0], out[1] = 0xD9, size
        out += 2
    elif size < 0x10000:
        out[0] = 0xDA
        _put_be(out + 1, size, 2)
        out += 3
    else:
        out[0] = 0xDB
        _put_be(out + 1, size, 4)
        out += 5
    memcpy(out, text, size)
    return out + size


cdef inline uint8_t* _write_int(uint8_t* out, int64_t value) noexcept nogil:
    """As msgpack packs an int: the smallest encoding, unsigned ones for values above zero."""
    cdef Py_ssize_t size = _int_bytes(value)
    if size == 1:
        out[0] = <uint8_t>value
        return out + 1
    if value > 0:
        out[0] = 0xCC if size == 2 else 0xCD if size == 3 else 0xCE if size == 5 else 0xCF
    else:
        out[0] = 0xD0 if size == 2 else 0xD1 if size == 3 else 0xD2 if size == 5 else 0xD3
    _put_be(out + 1, <uint64_t>value, size - 1)
    return out + size


cdef inline uint8_t* _write_array_head(uint8_t* out, Py_ssize_t size) noexcept nogil:
    if size < 16:
        out[0] = 0x90 | size
        return out + 1
    if size < 0x10000:
        out[0] = 0xDC
        _put_be(out + 1, size, 2)
        return out + 3
    out[0] = 0xDD
    _put_be(out + 1, size, 4)
    return out + 5


cdef class CompactStore:
    """A table with :class:`server.store.Store`'s interface and behaviour, held in C arrays (see the module).

    Args:
        clock: returns the current wall-clock time in seconds; tests pass a fake one.
        hlc: the clock that versions writes; one named "" on ``clock`` when omitted.
        tombstone_grace_s: how long a tombstone is kept after its delete.
        arena_bytes: the size of an arena (:data:`ARENA_BYTES`); tests make it small to compact often.
    """

    cdef Rec* recs
    cdef uint32_t rec_capacity, rec_top, free_head, free_records
    cdef uint32_t* slots
    cdef int slot_bits
    cdef uint32_t slot_mask, occupied
    cdef Deadline* expiry
    cdef Py_ssize_t expiry_len, expiry_capacity
    cdef Buried* buried
    cdef Py_ssize_t buried_len, buried_capacity
    cdef Py_ssize_t count, with_deadline, node_bytes, empty_bytes
    cdef Arena* arenas
    cdef uint32_t arena_capacity, current, arena_bytes, largest_entry_bytes
    #: Bytes of live arena entries (headers included), of large values' own blocks, and of the
    #: garbage of the arenas other than the current one.
    cdef Py_ssize_t live_bytes, block_bytes, garbage_bytes
    #: Arenas held now.
    cdef readonly Py_ssize_t arenas_held
    #: Compactions started since the table was made.
    cdef readonly Py_ssize_t compactions
    #: The arena being compacted (EMPTY: none) and how far its walk got.
    cdef uint32_t compacting, compact_offset
    cdef list nodes
    cdef dict node_numbers
    cdef object last_node  # the node name last numbered, and its number
    cdef int last_node_number
    cdef readonly object _clock
    cdef public object hlc
    cdef public double tombstone_grace_s
    #: Tombstones held (collected or not yet).
    cdef readonly Py_ssize_t tombstones
    cdef public Py_ssize_t expired_total
    #: What the memory cap adds per key beyond :attr:`memory_bytes` (:data:`KEY_SLACK_BYTES`).
    cdef readonly Py_ssize_t key_slack_bytes
    cdef bint tracking
    cdef uint32_t* order  # with tracking: each record's (previous, next) in order of use
    cdef uint32_t oldest, newest

    def __cinit__(self, *args, **kwargs):
        self.recs = NULL
        self.slots = NULL
        self.expiry = NULL
        self.buried = NULL
        self.order = NULL
        self.arenas = NULL
        self.oldest = self.newest = EMPTY
        self._set_arena_bytes(ARENA_BYTES)
        self._reset()

    def __init__(self, clock=time.time, hlc=None, tombstone_grace_s=_store.TOMBSTONE_GRACE_S,
                 Py_ssize_t arena_bytes=ARENA_BYTES):
        if not 64 <= arena_bytes <= 1 << 30:
            raise ValueError("an arena is from 64 bytes to 1 GiB")
        self._clock = clock
        self.hlc = hlc if hlc is not None else HybridLogicalClock("", clock)
        self.tombstone_grace_s = tombstone_grace_s
        self._set_arena_bytes(arena_bytes)
        self.expired_total = 0
        self.key_slack_bytes = KEY_SLACK_BYTES
        self._reset()  # again, now that the clock's node is known

    def __dealloc__(self):
        self._release()

    cdef void _set_arena_bytes(self, uint32_t arena_bytes) noexcept:
        self.arena_bytes = arena_bytes
        self.largest_entry_bytes = arena_bytes // 8  # a larger one takes a block of its own

    cdef void _release(self) noexcept:
        cdef uint32_t i
        if self.recs != NULL:
            for i in range(self.rec_top):
                if self.recs[i].flags & OWN_BLOCK:
                    free(self.recs[i].data)
        if self.arenas != NULL:
            for i in range(self.arena_capacity):
                free(self.arenas[i].base)
        free(self.arenas)
        self.arenas = NULL
        free(self.recs)
        free(self.slots)
        free(self.expiry)
        free(self.buried)
        free(self.order)
        self.order = NULL
        self.recs = NULL
        self.slots = NULL
        self.expiry = NULL
        self.buried = NULL

    cdef int _reset(self) except -1:
        """Free everything and start over with the first sizes (the table holds no record)."""
        self._release()
        self.rec_capacity = FIRST_RECORDS
        self.rec_top = 0
        self.free_head = EMPTY
        self.free_records = 0
        self.recs = <Rec*>malloc(FIRST_RECORDS * sizeof(Rec))
        self.slot_bits = FIRST_SLOT_BITS
        self.slot_mask = (1 << FIRST_SLOT_BITS) - 1
        self.slots = <uint32_t*>malloc((1 << FIRST_SLOT_BITS) * sizeof(uint32_t))
        self.expiry_capacity = self.buried_capacity = 8
        self.expiry = <Deadline*>malloc(8 * sizeof(Deadline))
        self.buried = <Buried*>malloc(8 * sizeof(Buried))
        self.arena_capacity = 4
        self.arenas = <Arena*>calloc(4, sizeof(Arena))
        self.current = self.compacting = EMPTY
        self.live_bytes = self.block_bytes = self.garbage_bytes = self.arenas_held = 0
        if (self.recs == NULL or self.slots == NULL or self.expiry == NULL or self.buried == NULL
                or self.arenas == NULL):
            raise MemoryError()
        if self.tracking:
            self._allocate_order(FIRST_RECORDS)
        for i in range(1 << FIRST_SLOT_BITS):
            self.slots[i] = EMPTY
        self.occupied = 0
        self.expiry_len = self.buried_len = 0
        self.count = self.with_deadline = self.tombstones = 0
        self.nodes = []  # no record names a node any more
        self.node_numbers = {}
        self.last_node = None
        self.node_bytes = 0
        if self.hlc is not None:
            self._node_number(self.hlc.node)  # this server's own: part of the empty table
        self.empty_bytes = self._structure_bytes() + self.node_bytes
        return 0

    cdef inline Py_ssize_t _structure_bytes(self):
        # Records in use: a doubled array's other pages are not touched yet, and a freed record is
        # not counted (as a freed block is not), the next new key takes it.
        return ((self.rec_top - self.free_records) * (sizeof(Rec) + (2 * sizeof(uint32_t) if self.tracking else 0))
                + (self.slot_mask + 1) * sizeof(uint32_t)
                + self.expiry_capacity * sizeof(Deadline) + self.buried_capacity * sizeof(Buried)
                + self.arena_capacity * sizeof(Arena))

    # -- the index and the records ----------------------------------------

    cdef inline uint32_t _home(self, uint32_t hash) noexcept nogil:
        return hash >> (32 - self.slot_bits)

    cdef inline Py_ssize_t _find(self, uint32_t hash, const char* key, Py_ssize_t key_len) noexcept nogil:
        """The slot of the record of ``key``, live or a tombstone; -1 if there is none."""
        cdef uint32_t i = self._home(hash), number
        cdef Rec* rec
        while True:
            number = self.slots[i]
            if number == EMPTY:
                return -1
            rec = &self.recs[number]
            if rec.hash == hash and rec.key_len == key_len and memcmp(rec.data, key, key_len) == 0:
                return i
            i = (i + 1) & self.slot_mask

    cdef inline Py_ssize_t _slot_of(self, str key) except -2:
        cdef const char* data
        cdef Py_ssize_t size
        keep = _utf8(key, &data, &size)
        return self._find(_hash(key), data, size)

    cdef int _grow_index(self) except -1:
        cdef int bits = self.slot_bits + 1
        cdef uint32_t capacity = 1 << bits, mask = capacity - 1, i, j, old_capacity = self.slot_mask + 1
        cdef uint32_t* slots = <uint32_t*>malloc(capacity * sizeof(uint32_t))
        if slots == NULL:
            raise MemoryError()
        for i in range(capacity):
            slots[i] = EMPTY
        for i in range(old_capacity):
            if self.slots[i] != EMPTY:
                j = self.recs[self.slots[i]].hash >> (32 - bits)
                while slots[j] != EMPTY:
                    j = (j + 1) & mask
                slots[j] = self.slots[i]
        free(self.slots)
        self.slots, self.slot_bits, self.slot_mask = slots, bits, mask
        return 0

    cdef uint32_t _new_record(self, uint32_t hash, const char* key, Py_ssize_t key_len, const char* value,
                              Py_ssize_t value_len) except? EMPTY:
        """A record holding ``key`` and ``value`` (flags only USED), placed in the index; its number."""
        cdef uint32_t number, i
        cdef Rec* recs
        cdef char* data
        if key_len > 0xFFFFFFFF or value_len > 0xFFFFFFFF:
            raise ValueError("a key or value of 4 GiB or more")
        if (self.occupied + 1) * 2 > self.slot_mask + 1:
            self._grow_index()
        if self.free_head != EMPTY:
            number = self.free_head
            self.free_head = self.recs[number].hash
            self.free_records -= 1
        else:
            if self.rec_top == self.rec_capacity:
                recs = <Rec*>realloc(self.recs, 2 * self.rec_capacity * sizeof(Rec))
                if recs == NULL:
                    raise MemoryError()
                self.recs = recs
                if self.tracking:
                    self._allocate_order(2 * self.rec_capacity)
                self.rec_capacity *= 2
            number = self.rec_top
            self.rec_top += 1
        rec = &self.recs[number]
        rec.data = NULL
        rec.flags = USED
        try:
            self._store_bytes(number, key, key_len, value, value_len)
        except MemoryError:
            rec.flags = 0
            rec.hash = self.free_head
            self.free_head = number
            self.free_records += 1
            raise
        rec.hash = hash
        rec.deadline = 0
        i = self._home(hash)
        while self.slots[i] != EMPTY:
            i = (i + 1) & self.slot_mask
        self.slots[i] = number
        self.occupied += 1
        return number

    cdef int _set_value(self, Rec* rec, const char* value, Py_ssize_t value_len) except -1:
        """Give ``rec`` the value: in place if its length is the old one's, else with its key in a new entry."""
        if value_len > 0xFFFFFFFF:
            raise ValueError("a value of 4 GiB or more")
        if value_len == rec.value_len:
            memcpy(rec.data + rec.key_len, value, value_len)
            return 0
        return self._store_bytes(<uint32_t>(rec - self.recs), rec.data, rec.key_len, value, value_len)

    # -- the arenas ------------------------------------------------------

    cdef int _store_bytes(self, uint32_t number, const char* key, Py_ssize_t key_len, const char* value,
                          Py_ssize_t value_len) except -1:
        """Put the record's key and value bytes in a new entry (a block of their own if large), then free its old one.

        ``key`` may be the record's own bytes: they are copied before they are freed.
        """
        cdef Rec* rec = &self.recs[number]
        cdef char* old_data = rec.data
        cdef Py_ssize_t old_size = rec.key_len + rec.value_len, size = key_len + value_len
        cdef uint32_t old_arena = rec.arena, header = number
        cdef bint old_own = rec.flags & OWN_BLOCK
        cdef Arena* arena
        cdef char* data
        if size + ENTRY_HEADER_BYTES > self.largest_entry_bytes:
            data = <char*>malloc(size + 1)  # + 1: never malloc(0)
            if data == NULL:
                raise MemoryError()
            self.block_bytes += _block_bytes(data)
            rec.flags |= OWN_BLOCK
        else:
            if self.current == EMPTY or self.arenas[self.current].used + size + ENTRY_HEADER_BYTES > self.arena_bytes:
                self._next_arena()
            arena = &self.arenas[self.current]
            data = arena.base + arena.used
            memcpy(data, &header, ENTRY_HEADER_BYTES)
            data += ENTRY_HEADER_BYTES
            arena.used += size + ENTRY_HEADER_BYTES
            self.live_bytes += size + ENTRY_HEADER_BYTES
            rec.flags &= ~OWN_BLOCK
            rec.arena = self.current
        memcpy(data, key, key_len)
        memcpy(data + key_len, value, value_len)
        rec.data = data
        rec.key_len = key_len
        rec.value_len = value_len
        if old_data != NULL:
            self._free_bytes(old_data, old_size, old_arena, old_own)
        return 0

    cdef int _free_bytes(self, char* data, Py_ssize_t size, uint32_t arena, bint own) except -1:
        """Free a record's old bytes: its own block, or its arena entry (which becomes garbage, then compaction's)."""
        if own:
            self.block_bytes -= _block_bytes(data)
            free(data)
            return 0
        self._kill_entry(data - ENTRY_HEADER_BYTES, size + ENTRY_HEADER_BYTES, arena)
        if self.compacting == EMPTY and self.garbage_bytes * GARBAGE_SHARE > self.live_bytes:
            self._start_compaction()
        if self.compacting != EMPTY:
            self._compact(self.arena_bytes // 64 + (GARBAGE_SHARE + 1) * (size + ENTRY_HEADER_BYTES))
        return 0

    cdef void _kill_entry(self, char* entry, uint32_t entry_bytes, uint32_t number) noexcept:
        """Mark an entry dead; an arena left with no live entry is freed (the current one starts over)."""
        cdef uint32_t header = DEAD | entry_bytes
        cdef Arena* arena = &self.arenas[number]
        memcpy(entry, &header, ENTRY_HEADER_BYTES)
        arena.garbage += entry_bytes
        self.live_bytes -= entry_bytes
        if number != self.current:
            self.garbage_bytes += entry_bytes
        if arena.garbage == arena.used:
            if number == self.current:
                arena.used = arena.garbage = 0
            else:
                self.garbage_bytes -= arena.garbage
                if number == self.compacting:
                    self.compacting = EMPTY
                free(arena.base)
                arena.base = NULL
                arena.used = arena.garbage = 0
                self.arenas_held -= 1

    cdef int _next_arena(self) except -1:
        """Make a new arena the current one (or the current one empty, when it holds only garbage)."""
        cdef uint32_t number = 0, capacity
        cdef Arena* arenas
        cdef char* base
        if self.current != EMPTY and self.arenas[self.current].garbage == self.arenas[self.current].used:
            self.arenas[self.current].used = self.arenas[self.current].garbage = 0
            return 0
        while number < self.arena_capacity and self.arenas[number].base != NULL:
            number += 1
        if number == self.arena_capacity:
            capacity = 2 * self.arena_capacity
            arenas = <Arena*>realloc(self.arenas, capacity * sizeof(Arena))
            if arenas == NULL:
                raise MemoryError()
            memset(arenas + self.arena_capacity, 0, self.arena_capacity * sizeof(Arena))
            self.arenas, self.arena_capacity = arenas, capacity
        base = <char*>malloc(self.arena_bytes)
        if base == NULL:
            raise MemoryError()
        if self.current != EMPTY:
            self.garbage_bytes += self.arenas[self.current].garbage
        self.arenas[number].base = base
        self.arenas[number].used = self.arenas[number].garbage = 0
        self.arenas_held += 1
        self.current = number
        return 0

    cdef void _start_compaction(self) noexcept:
        """Choose the arena (other than the current one) with the most garbage for :meth:`_compact`."""
        cdef uint32_t victim = EMPTY, number
        for number in range(self.arena_capacity):
            if (number != self.current and self.arenas[number].base != NULL
                    and (victim == EMPTY or self.arenas[number].garbage > self.arenas[victim].garbage)):
                victim = number
        if victim != EMPTY:
            self.compacting, self.compact_offset = victim, 0
            self.compactions += 1

    cdef int _compact(self, Py_ssize_t budget_bytes) except -1:
        """Walk on through the arena being compacted for ``budget_bytes`` (or one entry), moving its live entries.

        They go to the current arena (their records then point there); the
        arena is freed once its last live entry moved. A write that freed an
        entry walks a 64th of an arena and GARBAGE_SHARE + 1 times that
        entry's bytes: as the victim has the most garbage, at least a
        1/(GARBAGE_SHARE + 1)-th of what it walks, compaction frees garbage
        as fast as writes make it.
        """
        cdef uint32_t victim = self.compacting, header, entry_bytes
        cdef Rec* rec
        cdef char* entry
        while budget_bytes > 0 and self.compacting == victim:  # EMPTY once the victim was freed
            if self.compact_offset >= self.arenas[victim].used:  # cannot be: its last live entry's move frees it
                self.compacting = EMPTY
                break
            entry = self.arenas[victim].base + self.compact_offset
            memcpy(&header, entry, ENTRY_HEADER_BYTES)
            if header & DEAD:
                entry_bytes = header & ~DEAD
                self.compact_offset += entry_bytes
                budget_bytes -= entry_bytes
                continue
            rec = &self.recs[header]
            entry_bytes = ENTRY_HEADER_BYTES + rec.key_len + rec.value_len
            rec.data = NULL  # the bytes move: nothing to free but the entry killed below
            self._store_bytes(header, entry + ENTRY_HEADER_BYTES, rec.key_len,
                              entry + ENTRY_HEADER_BYTES + rec.key_len, rec.value_len)
            self.compact_offset += entry_bytes
            budget_bytes -= entry_bytes
            self._kill_entry(entry, entry_bytes, victim)
        return 0

    cdef int _free_slot(self, Py_ssize_t slot) except -1:
        """Remove the record at ``slot`` from the index and free it (its counts are the caller's)."""
        cdef uint32_t number = self.slots[slot], i = slot, j = slot, home
        cdef Rec* rec = &self.recs[number]
        cdef char* data = rec.data
        cdef Py_ssize_t size = rec.key_len + rec.value_len
        cdef bint own = rec.flags & OWN_BLOCK
        self._unlink(number)
        rec.data = NULL
        rec.flags = 0
        rec.hash = self.free_head
        self.free_head = number
        self.free_records += 1
        while True:  # backward-shift deletion: no marker is left in the index
            j = (j + 1) & self.slot_mask
            if self.slots[j] == EMPTY:
                break
            home = self._home(self.recs[self.slots[j]].hash)
            if (i <= j and (home <= i or home > j)) or (i > j and home <= i and home > j):
                self.slots[i] = self.slots[j]
                i = j
        self.slots[i] = EMPTY
        self.occupied -= 1
        if self.occupied:
            return self._free_bytes(data, size, rec.arena, own)
        if own:
            free(data)
        return self._reset()

    cdef int _node_number(self, str node) except -1:
        if node is self.last_node:  # a run of versions of one node (an mset, a load)
            return self.last_node_number
        number = self.node_numbers.get(node)
        if number is None:
            number = len(self.nodes)
            node = sys.intern(node)
            self.nodes.append(node)
            self.node_numbers[node] = number
            self.node_bytes += sys.getsizeof(node) + 8 + 100  # the str, its list slot and dict entry
        self.last_node, self.last_node_number = node, number
        return number

    cdef int _set_version(self, Rec* rec, tuple version) except -1:
        rec.ms = version[0]
        rec.counter = version[1]
        rec.node = self._node_number(version[2])
        return 0

    cdef inline tuple _version(self, Rec* rec):
        return (rec.ms, rec.counter, self.nodes[rec.node])

    cdef inline object _deadline_of(self, Rec* rec):
        return rec.deadline if rec.flags & HAS_DEADLINE else None

    cdef int _set_deadline(self, uint32_t number, object deadline) except -1:
        cdef Rec* rec = &self.recs[number]
        cdef Deadline* heap
        if deadline is None:
            if rec.flags & HAS_DEADLINE:
                rec.flags &= ~HAS_DEADLINE
                self.with_deadline -= 1
            return 0
        if not rec.flags & HAS_DEADLINE:
            rec.flags |= HAS_DEADLINE
            self.with_deadline += 1
        rec.deadline = deadline
        if self.expiry_len == self.expiry_capacity:
            heap = <Deadline*>realloc(self.expiry, 2 * self.expiry_capacity * sizeof(Deadline))
            if heap == NULL:
                raise MemoryError()
            self.expiry = heap
            self.expiry_capacity *= 2
        self.expiry[self.expiry_len].deadline = rec.deadline
        self.expiry[self.expiry_len].record = number
        self.expiry_len += 1
        _heap_up_d(self.expiry, self.expiry_len - 1)
        return 0

    cdef int _push_buried(self, uint32_t number) except -1:
        cdef Buried* heap
        if self.buried_len == self.buried_capacity:
            heap = <Buried*>realloc(self.buried, 2 * self.buried_capacity * sizeof(Buried))
            if heap == NULL:
                raise MemoryError()
            self.buried = heap
            self.buried_capacity *= 2
        self.buried[self.buried_len].ms = self.recs[number].ms
        self.buried[self.buried_len].record = number
        self.buried_len += 1
        _heap_up_b(self.buried, self.buried_len - 1)
        return 0

    # -- the order of use (allkeys-lru) ------------------------------------

    def track_recency(self):
        """Keep live keys in order of use from now on (for allkeys-lru); True: this table does.

        A key is used when an operation finds it live (a read, ``exists``,
        ``ttl``...) or writes it. Keys held now count as used before any
        later use, in record order. Costs 8 bytes a record, counted in
        :attr:`memory_bytes`.
        """
        cdef uint32_t number
        if not self.tracking:
            self.tracking = True
            self.oldest = self.newest = EMPTY
            self._allocate_order(self.rec_capacity)
            if self.occupied == 0:
                self.empty_bytes = self._structure_bytes() + self.node_bytes
            for number in range(self.rec_top):
                if self.recs[number].flags & USED and not self.recs[number].flags & TOMBSTONE:
                    self._touch(number)
        return True

    def least_recently_used(self):
        """The live key used longest ago (expired or not), or None; only while :meth:`track_recency` is on."""
        cdef Rec* rec
        if not self.tracking or self.oldest == EMPTY:
            return None
        rec = &self.recs[self.oldest]
        return _text(rec.data, rec.key_len)

    cdef int _allocate_order(self, uint32_t capacity) except -1:
        cdef uint32_t* order = <uint32_t*>realloc(self.order, 2 * capacity * sizeof(uint32_t))
        if order == NULL:
            raise MemoryError()
        self.order = order
        if self.rec_top == 0:
            self.oldest = self.newest = EMPTY
        return 0

    cdef inline void _unlink(self, uint32_t number) noexcept:
        cdef uint32_t before, after
        if not self.recs[number].flags & IN_ORDER:
            return
        self.recs[number].flags &= ~IN_ORDER
        before, after = self.order[2 * number], self.order[2 * number + 1]
        if before == EMPTY:
            self.oldest = after
        else:
            self.order[2 * before + 1] = after
        if after == EMPTY:
            self.newest = before
        else:
            self.order[2 * after] = before

    cdef inline void _touch(self, uint32_t number) noexcept:
        if not self.tracking or (self.newest == number and self.recs[number].flags & IN_ORDER):
            return
        self._unlink(number)
        self.recs[number].flags |= IN_ORDER
        self.order[2 * number] = self.newest
        self.order[2 * number + 1] = EMPTY
        if self.newest == EMPTY:
            self.oldest = number
        else:
            self.order[2 * self.newest + 1] = number
        self.newest = number

    cdef Py_ssize_t _live(self, str key) except -2:
        """The slot of the live ``key``, or -1; an expired key found is removed (as Store.get does)."""
        cdef Py_ssize_t slot = self._slot_of(key)
        cdef Rec* rec
        if slot < 0:
            return -1
        rec = &self.recs[self.slots[slot]]
        if rec.flags & TOMBSTONE:
            return -1
        if rec.flags & HAS_DEADLINE and rec.deadline <= self._clock():
            self._remove_slot(slot)
            self.expired_total += 1
            return -1
        self._touch(self.slots[slot])
        return slot

    cdef int _remove_slot(self, Py_ssize_t slot) except -1:
        """Remove the live record at ``slot``: no tombstone, not journaled (Store._remove)."""
        cdef Rec* rec = &self.recs[self.slots[slot]]
        if rec.flags & HAS_DEADLINE:
            self.with_deadline -= 1
        self.count -= 1
        return self._free_slot(slot)

    def new_key_bytes(self, str key not None):
        """What a new ``key`` adds to :attr:`memory_bytes` and :attr:`slack_bytes` besides its value, at most.

        The memory cap's estimate: its record, its share of the index (a
        quarter full right after it doubles: 4 slots), its place in the order
        of use, and its bytes with the entry's header and their garbage share.
        """
        return (sizeof(Rec) + 4 * sizeof(uint32_t) + (2 * sizeof(uint32_t) if self.tracking else 0)
                + _with_garbage_share(ENTRY_HEADER_BYTES + _utf8_size(key)))

    def value_bytes(self, str value not None):
        """What ``value`` adds to :attr:`memory_bytes` and :attr:`slack_bytes`: its UTF-8 bytes and their garbage share.

        A value too large for an arena takes a block of its own, whose
        allocator's header and rounding (24 bytes at most) its share covers.
        """
        return _with_garbage_share(_utf8_size(value))

    # -- reading ---------------------------------------------------------

    def __len__(self):
        return self.count

    @property
    def keys_with_ttl(self):
        """How many keys have a deadline (some may have passed it already)."""
        return self.with_deadline

    @property
    def memory_bytes(self):
        """What the table holds beyond an empty table's arrays (see the module docstring)."""
        return self.live_bytes + self.block_bytes + self._structure_bytes() + self.node_bytes - self.empty_bytes

    @property
    def slack_bytes(self):
        """What the memory cap adds to :attr:`memory_bytes`: :attr:`key_slack_bytes` a key and the garbage share.

        Compaction holds the garbage of the arenas other than the current one
        to a :data:`GARBAGE_SHARE`-th of the live entries' bytes; that bound is
        counted, not the garbage itself, so that it falls when a key goes.
        """
        return self.count * self.key_slack_bytes + self.live_bytes // GARBAGE_SHARE

    def get(self, str key not None):
        """The value of ``key``, or None if it is missing or expired."""
        cdef Py_ssize_t slot = self._live(key)
        cdef Rec* rec
        if slot < 0:
            return None
        rec = &self.recs[self.slots[slot]]
        return _text(rec.data + rec.key_len, rec.value_len)

    def exists(self, str key not None):
        return self._live(key) >= 0

    def ttl(self, str key not None):
        """Seconds ``key`` has left; -1 if it never expires, -2 if it is missing."""
        cdef Py_ssize_t slot = self._live(key)
        cdef Rec* rec
        if slot < 0:
            return -2
        rec = &self.recs[self.slots[slot]]
        if not rec.flags & HAS_DEADLINE:
            return -1
        return max(0.0, rec.deadline - self._clock())

    def deadline(self, str key not None):
        """The wall-clock second ``key`` expires at, or None."""
        cdef Py_ssize_t slot = self._slot_of(key)
        cdef Rec* rec
        if slot < 0:
            return None
        rec = &self.recs[self.slots[slot]]
        return None if rec.flags & TOMBSTONE else self._deadline_of(rec)

    def version(self, str key not None):
        """The version of the live ``key``, or None if it is missing or expired."""
        cdef Py_ssize_t slot = self._live(key)
        if slot < 0:
            return None
        return self._version(&self.recs[self.slots[slot]])

    def tombstone(self, str key not None):
        """The version of the delete that left ``key``'s tombstone, or None if it has none."""
        cdef Py_ssize_t slot
        cdef Rec* rec
        if not self.tombstones:
            return None
        slot = self._slot_of(key)
        if slot < 0:
            return None
        rec = &self.recs[self.slots[slot]]
        return self._version(rec) if rec.flags & TOMBSTONE else None

    def record(self, str key not None):
        """``key``'s record, a tombstone's included; None if the table holds nothing for it."""
        cdef Py_ssize_t slot = self._live(key)
        cdef Rec* rec
        if slot < 0:
            version = self.tombstone(key)
            return None if version is None else (key, None, version, None)
        rec = &self.recs[self.slots[slot]]
        return (key, _text(rec.data + rec.key_len, rec.value_len), self._version(rec), self._deadline_of(rec))

    def _held(self, str key not None):
        """What the table holds for ``key``, expired or not: ``(key, value, version, deadline)``.

        ``value`` None: a tombstone of ``version``, or nothing at all (version None).
        """
        cdef Py_ssize_t slot = self._slot_of(key)
        cdef Rec* rec
        if slot < 0:
            return key, None, None, None
        rec = &self.recs[self.slots[slot]]
        if rec.flags & TOMBSTONE:
            return key, None, self._version(rec), None
        return key, _text(rec.data + rec.key_len, rec.value_len), self._version(rec), self._deadline_of(rec)

    cdef inline tuple _record_at(self, Rec* rec):
        key = _text(rec.data, rec.key_len)
        if rec.flags & TOMBSTONE:
            return (key, None, self._version(rec), None)
        return (key, _text(rec.data + rec.key_len, rec.value_len), self._version(rec), self._deadline_of(rec))

    def items(self):
        """Every live ``(key, value, deadline)``, for snapshots and rebalancing.

        By record number: a key held throughout is yielded once, whatever
        changes while the iteration is paused.
        """
        cdef uint32_t number = 0
        cdef Rec* rec
        now = self._clock()
        while number < self.rec_top:
            rec = &self.recs[number]
            number += 1
            if rec.flags & USED and not rec.flags & TOMBSTONE and not (
                    rec.flags & HAS_DEADLINE and rec.deadline <= now):
                yield (_text(rec.data, rec.key_len), _text(rec.data + rec.key_len, rec.value_len),
                       self._deadline_of(rec))

    def records(self):
        """Every live key's record and every tombstone's: what a snapshot holds (by record number, as items)."""
        cdef uint32_t number = 0
        cdef Rec* rec
        now = self._clock()
        while number < self.rec_top:
            rec = &self.recs[number]
            number += 1
            if rec.flags & USED and not (rec.flags & HAS_DEADLINE and rec.deadline <= now):
                yield self._record_at(rec)

    cdef inline uint32_t _step_end(self, uint32_t position) noexcept:
        """The first position after the step that starts at ``position`` (see the module docstring)."""
        cdef int shift
        if self.slot_bits <= _POSITION_BITS:
            shift = _POSITION_BITS - self.slot_bits
            return ((position >> shift) + 1) << shift
        return position + 1

    cdef int _step(self, uint32_t first, uint32_t end, list found, bint records, object match, double now,
                   Py_ssize_t* examined, Py_ssize_t* found_bytes) except -1:
        """Append the records at positions ``first`` to ``end`` (excluded) to ``found``: keys or records."""
        cdef uint32_t start, stop, i, number, position
        cdef uint64_t steps = 0
        cdef Rec* rec
        if self.slot_bits <= _POSITION_BITS:
            start = first >> (_POSITION_BITS - self.slot_bits)
            stop = start + 1
        else:
            start = first << (self.slot_bits - _POSITION_BITS)
            stop = (first + 1) << (self.slot_bits - _POSITION_BITS)
        i = start
        while steps <= self.slot_mask:
            number = self.slots[i & self.slot_mask]
            if number == EMPTY:
                if i >= stop:
                    break
            else:
                rec = &self.recs[number]
                position = rec.hash >> (32 - _POSITION_BITS)
                if first <= position < end:
                    examined[0] += 1
                    if rec.flags & HAS_DEADLINE and not rec.flags & TOMBSTONE and rec.deadline <= now:
                        pass
                    elif records:
                        found.append(self._record_at(rec))
                        found_bytes[0] += rec.key_len + (0 if rec.flags & TOMBSTONE else rec.value_len)
                    elif not rec.flags & TOMBSTONE:
                        key = _text(rec.data, rec.key_len)
                        if match is None or match(key):
                            found.append(key)
                            found_bytes[0] += rec.key_len
            i += 1
            steps += 1
        return 0

    def scan(self, cursor, str pattern, count, deadline=None, max_bytes=None):
        """One page of the live keys matching the glob ``pattern``, as :meth:`server.store.Store.scan`.

        A step is one home slot's positions (see the module docstring), or a
        single position where a home slot's records would take more than
        ``max_bytes``; the page ends after a step once ``count`` keys were examined,
        ``time.perf_counter()`` reached ``deadline``, or the keys found take
        ``max_bytes``; always at least one step. Returns ``(next_cursor, keys)``,
        ``next_cursor`` 0 when the scan is complete.

        Raises:
            PatternTooComplex: see :func:`server.glob_match.compile_glob`.
        """
        return self._scan(cursor, compile_glob(pattern), count, deadline, max_bytes, False)

    def scan_records(self, cursor, count, deadline=None, max_bytes=None):
        """One page of every record, tombstones included, from scan position ``cursor``.

        The positions and steps are :meth:`scan`'s; the records' keys and
        values count towards ``max_bytes``.
        """
        return self._scan(cursor, None, count, deadline, max_bytes, True)

    cdef tuple _scan(self, object cursor, object match, Py_ssize_t count, object deadline, object max_bytes,
                     bint records):
        cdef uint32_t position, end
        cdef list found = []
        cdef Py_ssize_t examined = 0, found_bytes = 0
        cdef double now = self._clock()
        cdef Py_ssize_t byte_limit = -1 if max_bytes is None else max_bytes
        clock = time.perf_counter
        if not 0 <= cursor < _SCAN_POSITIONS:
            raise ValueError("a scan position is from 0 to SCAN_POSITIONS - 1")
        cdef Py_ssize_t mark, bytes_before, examined_before
        position = cursor
        while position < _SCAN_POSITIONS:
            end = self._step_end(position)
            mark, bytes_before, examined_before = len(found), found_bytes, examined
            self._step(position, end, found, records, match, now, &examined, &found_bytes)
            if byte_limit >= 0 and found_bytes > byte_limit and end - position > 1:
                # More than the page may hold in one step (large values sharing a home slot of a
                # small index): this home slot's positions one at a time instead, up to the limit,
                # as the Python table splits a bucket into sub-buckets.
                del found[mark:]
                found_bytes, examined = bytes_before, examined_before
                while position < end:
                    self._step(position, position + 1, found, records, match, now, &examined, &found_bytes)
                    position += 1
                    if found_bytes >= byte_limit:
                        break
            else:
                position = end
            if (examined >= count or (deadline is not None and clock() >= deadline)
                    or (byte_limit >= 0 and found_bytes >= byte_limit)):
                break
        return (0 if position >= _SCAN_POSITIONS else position), found

    # -- writing ---------------------------------------------------------

    def set(self, str key not None, str value not None, ttl_s=None, bint nx=False, bint xx=False):
        """Store ``value`` under ``key``; returns False if a condition failed (as Store.set)."""
        cdef bint present
        if nx or xx:
            present = self._live(key) >= 0
            if (nx and present) or (xx and not present):
                return False
        self.put(key, value, None if ttl_s is None else self._clock() + ttl_s)
        return True

    cpdef put(self, str key, str value, object deadline, object version=None):
        """Store ``value`` with an absolute deadline (None: never expires) and ``version`` (None: a new one).

        A tombstone of the key is removed.
        """
        self._put(key, value, deadline, version)

    cdef int _put(self, str key, str value, object deadline, object version) except -1:
        cdef const char* key_data
        cdef const char* value_data
        cdef Py_ssize_t key_size, value_size, slot
        cdef uint32_t number, hash
        cdef Rec* rec
        if key is None or value is None:
            raise TypeError("key and value must be str")
        if version is None:
            version = self.hlc.issue()
        keep_key = _utf8(key, &key_data, &key_size)
        keep_value = _utf8(value, &value_data, &value_size)
        hash = _hash(key)
        slot = self._find(hash, key_data, key_size)
        if slot < 0:
            number = self._new_record(hash, key_data, key_size, value_data, value_size)
            self.count += 1
        else:
            number = self.slots[slot]
            rec = &self.recs[number]
            if rec.flags & TOMBSTONE:
                rec.flags &= ~TOMBSTONE
                self.tombstones -= 1
                self.count += 1
            self._set_value(rec, value_data, value_size)
        rec = &self.recs[number]
        self._set_version(rec, version)
        self._touch(number)
        self._set_deadline(number, deadline)
        return 0

    def put_if_newer(self, str key not None, value, version, deadline):
        """Apply a record copied from another replica if ``version`` is newer (as Store.put_if_newer)."""
        return _store.put_record_if_newer(self, key, value, version, deadline)

    def load(self, entries, double now):
        """Apply saved ``(key, value, version, deadline)`` entries in order (as Store.load).

        Each entry is applied with the table's own C operations, never
        through the overridable methods (nothing is journaled), and the clock
        then moves past the newest version loaded.
        """
        cdef double collected_before_ms = (now - self.tombstone_grace_s) * 1000
        cdef Py_ssize_t slot
        newest = _ZERO_VERSION
        for key, value, version, deadline in entries:
            if version is not None:
                version = (version[0], version[1], version[2])
            if version is not None and version > newest:
                newest = version
            slot = self._slot_of(key)
            if value is None or (deadline is not None and deadline <= now):
                if slot >= 0:
                    self._forget_slot(slot)
                if value is None and version is not None and version[0] > collected_before_ms:
                    self._bury_c(key, version)
                continue
            if slot >= 0 and self.recs[self.slots[slot]].flags & TOMBSTONE:
                self._forget_slot(slot)
            self._put(key, value, deadline, version if version is not None else _ZERO_VERSION)
        self.hlc.observe(newest)

    def set_many(self, dict pairs not None, ttl_s=None):
        """Store every pair with one deadline and one version (as Store.set_many)."""
        deadline = None if ttl_s is None else self._clock() + ttl_s
        version = self.hlc.issue()
        for key, value in pairs.items():
            self.put(key, value, deadline, version)

    def delete(self, str key not None):
        """Remove ``key``, leaving a tombstone; True if it was there (and not expired)."""
        if self._live(key) < 0:
            return False
        self._bury(key, self.hlc.issue())
        return True

    def evict(self, str key not None):
        """Remove ``key`` without a tombstone (the memory cap makes room); True if it was there."""
        if self._live(key) < 0:
            return False
        self._drop(key)
        return True

    def incr(self, str key not None, delta):
        """Add ``delta`` to the integer at ``key`` (missing counts as 0); the deadline is kept.

        Raises:
            NotAnInteger: the value is not a decimal int64, or the sum overflows.
        """
        result = _store.incremented(key, self.get(key), delta)
        self.put(key, str(result), self.deadline(key))
        return result

    def cas(self, str key not None, expected, str value not None, ttl_s=None):
        """Set ``key`` to ``value`` only if its current value equals ``expected``."""
        if self.get(key) != expected:
            return False
        self.put(key, value, None if ttl_s is None else self._clock() + ttl_s)
        return True

    # -- expiry ----------------------------------------------------------

    def sweep(self, Py_ssize_t limit=1000):
        """Remove up to ``limit`` expired keys, and as many tombstones past their grace; returns how many keys."""
        cdef double now = self._clock()
        cdef Py_ssize_t removed = 0, slot
        cdef Deadline top
        cdef Rec* rec
        while self.expiry_len and self.expiry[0].deadline <= now and removed < limit:
            top = self.expiry[0]
            self._pop_expiry()
            rec = &self.recs[top.record] if top.record < self.rec_top else NULL
            if (rec != NULL and rec.flags & USED and not rec.flags & TOMBSTONE and rec.flags & HAS_DEADLINE
                    and rec.deadline == top.deadline):
                slot = self._find(rec.hash, rec.data, rec.key_len)
                self._remove_slot(slot)
                self.expired_total += 1
                removed += 1
        if self.expiry_len > 2 * self.with_deadline + 1024:
            self._rebuild_heaps()
        if self.buried_len:
            self._collect_tombstones((now - self.tombstone_grace_s) * 1000, limit)
        return removed

    cdef void _pop_expiry(self) noexcept:
        self.expiry_len -= 1
        if self.expiry_len:
            self.expiry[0] = self.expiry[self.expiry_len]
            _heap_down_d(self.expiry, self.expiry_len, 0)

    cdef int _collect_tombstones(self, double before_ms, Py_ssize_t limit) except -1:
        cdef Py_ssize_t collected = 0
        cdef Buried top
        cdef Rec* rec
        while self.buried_len and self.buried[0].ms < before_ms and collected < limit:
            top = self.buried[0]
            self.buried_len -= 1
            if self.buried_len:
                self.buried[0] = self.buried[self.buried_len]
                _heap_down_b(self.buried, self.buried_len, 0)
            rec = &self.recs[top.record] if top.record < self.rec_top else NULL
            if rec != NULL and rec.flags & TOMBSTONE and rec.ms == top.ms:
                self.tombstones -= 1
                self._free_slot(self._find(rec.hash, rec.data, rec.key_len))
                collected += 1
        if self.buried_len > 2 * self.tombstones + 1024:
            self._rebuild_heaps()
        return 0

    cdef int _rebuild_heaps(self) except -1:
        """Drop the heaps' stale entries: rebuild both from the records."""
        cdef uint32_t number
        cdef Rec* rec
        cdef Py_ssize_t i
        self.expiry_len = self.buried_len = 0
        for number in range(self.rec_top):
            rec = &self.recs[number]
            if rec.flags & TOMBSTONE:
                self.buried[self.buried_len].ms = rec.ms
                self.buried[self.buried_len].record = number
                self.buried_len += 1
            elif rec.flags & HAS_DEADLINE:
                self.expiry[self.expiry_len].deadline = rec.deadline
                self.expiry[self.expiry_len].record = number
                self.expiry_len += 1
        for i in range(self.expiry_len // 2 - 1, -1, -1):
            _heap_down_d(self.expiry, self.expiry_len, i)
        for i in range(self.buried_len // 2 - 1, -1, -1):
            _heap_down_b(self.buried, self.buried_len, i)
        return 0

    def soonest_expiring(self):
        """The key with the nearest deadline (volatile-ttl eviction), or None."""
        cdef Deadline top
        cdef Rec* rec
        while self.expiry_len:
            top = self.expiry[0]
            rec = &self.recs[top.record] if top.record < self.rec_top else NULL
            if (rec != NULL and rec.flags & USED and not rec.flags & TOMBSTONE and rec.flags & HAS_DEADLINE
                    and rec.deadline == top.deadline):
                return _text(rec.data, rec.key_len)
            self._pop_expiry()  # a stale entry: the key was deleted or re-set
        return None

    # -- the changes a journal records (JournaledStore overrides them) -----

    cpdef _drop(self, str key):
        """Remove the live ``key`` without a tombstone."""
        cdef Py_ssize_t slot = self._slot_of(key)
        if slot >= 0 and not self.recs[self.slots[slot]].flags & TOMBSTONE:
            self._remove_slot(slot)

    cpdef _bury(self, str key, tuple version):
        """Replace whatever the table holds for ``key`` by a tombstone of ``version``."""
        self._bury_c(key, version)

    cdef int _bury_c(self, str key, tuple version) except -1:
        cdef const char* key_data
        cdef Py_ssize_t key_size, slot
        cdef uint32_t hash = _hash(key), number
        cdef Rec* rec
        keep = _utf8(key, &key_data, &key_size)
        slot = self._find(hash, key_data, key_size)
        if slot < 0:
            number = self._new_record(hash, key_data, key_size, NULL, 0)
            self.tombstones += 1
        else:
            number = self.slots[slot]
            rec = &self.recs[number]
            if not rec.flags & TOMBSTONE:
                self._unlink(number)
                self.count -= 1
                self.tombstones += 1
                self._set_deadline(number, None)
                self._set_value(rec, NULL, 0)
        rec = &self.recs[number]
        rec.flags |= TOMBSTONE
        self._set_version(rec, version)
        self._push_buried(number)
        return 0

    cdef int _forget_slot(self, Py_ssize_t slot) except -1:
        cdef Rec* rec = &self.recs[self.slots[slot]]
        if rec.flags & TOMBSTONE:
            self.tombstones -= 1
            return self._free_slot(slot)
        return self._remove_slot(slot)

    def _forget(self, str key not None):
        """Remove whatever the table holds for ``key``, expired or not: no tombstone, not journaled."""
        cdef Py_ssize_t slot = self._slot_of(key)
        if slot >= 0:
            self._forget_slot(slot)

    def _unbury(self, str key not None):
        """Remove ``key``'s tombstone, if it has one."""
        cdef Py_ssize_t slot = self._slot_of(key)
        if slot >= 0 and self.recs[self.slots[slot]].flags & TOMBSTONE:
            self._forget_slot(slot)

    # -- loading and saving in bulk (snapshot and journal payloads) -----------

    def load_payloads(self, payloads, double now, add_replies):
        """Apply the entries of current-format payloads ``[entries, replies]`` in order, as
        :meth:`server.store.Store.load_payloads`, read straight from the bytes.

        What :meth:`load` does with the same entries, but no Python object is
        made per entry, except a str for a key that is not pure ASCII and one
        per run of entries of one node name. Each payload's replies (few)
        are decoded by msgpack and passed to ``add_replies``.

        Raises:
            ValueError: a payload is cut short, not of this shape, or not valid UTF-8 where a str is
                (the entries before it are applied).
        """
        for payload in payloads:
            add_replies(self._load_payload(payload, now))

    cdef object _load_payload(self, object payload, double now):
        cdef Py_buffer view
        cdef Reader r
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            r.data, r.size, r.at = <const uint8_t*>view.buf, view.len, 0
            if _read_array(&r) != 2:
                raise ValueError("a payload is an array [entries, replies]")
            self._load_entries(&r, now)
            return msgpack.unpackb(payload[r.at:], raw=False, use_list=False)
        finally:
            PyBuffer_Release(&view)

    cdef int _load_entries(self, Reader* r, double now) except -1:
        cdef Py_ssize_t entries = _read_array(r), key_size, value_size, node_size, slot
        cdef const char* key
        cdef const char* value
        cdef const char* node_data
        cdef const char* last_node = NULL
        cdef Py_ssize_t last_node_size = -1, i
        cdef int64_t ms, counter, newest_ms = 0, newest_counter = 0
        cdef uint32_t hash, number, node = 0
        cdef bint versioned, has_deadline
        cdef double deadline = 0, collected_before_ms = (now - self.tombstone_grace_s) * 1000
        cdef Rec* rec
        cdef str node_name = None
        cdef str newest_node = ""
        for i in range(entries):
            if _read_array(r) != 4:
                raise ValueError(f"payload byte {r.at}: an entry is [key, value, version, deadline]")
            key = _read_str(r, &key_size)
            value = NULL
            if not _read_nil(r):
                value = _read_str(r, &value_size)
                _check_utf8(value, value_size)
            versioned = not _read_nil(r)
            if versioned:
                if _read_array(r) != 3:
                    raise ValueError(f"payload byte {r.at}: a version is [ms, counter, node]")
                _read_int(r, &ms)
                _read_int(r, &counter)
                if not 0 <= counter <= 0xFFFF:
                    raise ValueError(f"payload byte {r.at}: a version's counter beyond 16 bits")
                node_data = _read_str(r, &node_size)
                if node_size != last_node_size or memcmp(node_data, last_node, node_size) != 0:
                    node_name = PyUnicode_DecodeUTF8(node_data, node_size, NULL)
                    last_node, last_node_size = node_data, node_size
                if (ms > newest_ms or (ms == newest_ms and counter > newest_counter)
                        or (ms == newest_ms and counter == newest_counter and node_name > newest_node)):
                    newest_ms, newest_counter, newest_node = ms, counter, node_name
            _read_deadline(r, &has_deadline, &deadline)
            hash = _hash_utf8(key, key_size)
            slot = self._find(hash, key, key_size)
            if value == NULL or (has_deadline and deadline <= now):
                if slot >= 0:
                    self._forget_slot(slot)
                if value == NULL and versioned and ms > collected_before_ms:
                    number = self._new_record(hash, key, key_size, NULL, 0)
                    self.tombstones += 1
                    rec = &self.recs[number]
                    rec.flags |= TOMBSTONE
                    self._set_version_parts(rec, ms, counter, node_name)
                    self._push_buried(number)
                continue
            if slot >= 0 and self.recs[self.slots[slot]].flags & TOMBSTONE:
                self._forget_slot(slot)
                slot = -1
            if slot < 0:
                number = self._new_record(hash, key, key_size, value, value_size)
                self.count += 1
            else:
                number = self.slots[slot]
                self._set_value(&self.recs[number], value, value_size)
            rec = &self.recs[number]
            if versioned:
                self._set_version_parts(rec, ms, counter, node_name)
            else:
                self._set_version_parts(rec, 0, 0, "")
            self._touch(number)
            self._set_deadline(number, deadline if has_deadline else None)
        self.hlc.observe((newest_ms, newest_counter, newest_node))
        return 0

    cdef int _set_version_parts(self, Rec* rec, int64_t ms, int64_t counter, str node) except -1:
        """:meth:`_set_version` from the version's parts (no tuple made)."""
        rec.ms = ms
        rec.counter = counter
        rec.node = self._node_number(node)
        return 0

    def snapshot_payloads(self, Py_ssize_t max_entries):
        """The payloads ``[entries, []]`` of a snapshot, up to ``max_entries`` entries each.

        The bytes of ``msgpack.packb((entries, ()))`` for the entries
        :meth:`records` yields, in its order, packed straight from the
        records: each payload is made when the iteration reaches it, so a
        caller may write them between batches while the table changes.
        """
        cdef uint32_t number = 0
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        while True:
            payload = self._pack_records(&number, max_entries)
            if payload is None:
                return
            yield payload

    cdef inline bint _saved(self, Rec* rec, double now) noexcept:
        """Whether :meth:`records` yields this record: a live key not expired, or a tombstone."""
        return rec.flags & USED and not (rec.flags & HAS_DEADLINE and rec.deadline <= now)

    cdef inline Rec* _next_saved(self, uint32_t* number, uint32_t end, double now) noexcept:
        """The next record :meth:`records` yields from record ``number[0]`` (moved past it) before ``end``; NULL
        if none is left."""
        cdef Rec* rec
        while number[0] < end:
            rec = &self.recs[number[0]]
            number[0] += 1
            if self._saved(rec, now):
                return rec
        return NULL

    cdef const char* _node_utf8(self, uint32_t node, Py_ssize_t* size) except NULL:
        """Node name ``node``'s UTF-8 bytes (its length in ``size``)."""
        cdef const char* data = PyUnicode_AsUTF8AndSize(self.nodes[node], size)
        if data == NULL:
            PyErr_Clear()
            raise ValueError("a node name holds a lone surrogate, which UTF-8 (and msgpack) cannot encode")
        return data

    cdef object _pack_records(self, uint32_t* start, Py_ssize_t max_entries):
        """The payload of the next ``max_entries`` records from record ``start[0]``, which moves past
        them; None when none is left. Two passes: the sizes, then the bytes."""
        cdef double now = self._clock()
        cdef uint32_t number = start[0], end, node = EMPTY
        cdef Py_ssize_t entries = 0, size = 0, node_size = 0
        cdef const char* node_data = NULL
        cdef Rec* rec
        cdef uint8_t* out
        cdef uint64_t raw
        while entries < max_entries:
            rec = self._next_saved(&number, self.rec_top, now)
            if rec == NULL:
                break
            if rec.node != node:
                node = rec.node
                node_data = self._node_utf8(node, &node_size)
            _check_packable(rec.data, rec.key_len)
            if not rec.flags & TOMBSTONE:
                _check_packable(rec.data + rec.key_len, rec.value_len)
            entries += 1
            size += (2 + _str_head_bytes(rec.key_len) + rec.key_len + _int_bytes(rec.ms) + _int_bytes(rec.counter)
                     + _str_head_bytes(node_size) + node_size)
            if rec.flags & TOMBSTONE:
                size += 2
            else:
                size += _str_head_bytes(rec.value_len) + rec.value_len + (9 if rec.flags & HAS_DEADLINE else 1)
        end = number
        if entries == 0:
            start[0] = end
            return None
        size += 2 + (1 if entries < 16 else 3 if entries < 0x10000 else 5)
        payload = PyBytes_FromStringAndSize(NULL, size)
        out = <uint8_t*>PyBytes_AS_STRING(payload)
        out[0] = 0x92
        out = _write_array_head(out + 1, entries)
        node = EMPTY
        number = start[0]
        while True:
            rec = self._next_saved(&number, end, now)
            if rec == NULL:
                break
            if rec.node != node:
                node = rec.node
                node_data = self._node_utf8(node, &node_size)
            out[0] = 0x94
            out = _write_str(out + 1, rec.data, rec.key_len)
            if rec.flags & TOMBSTONE:
                out[0] = 0xC0
                out += 1
            else:
                out = _write_str(out, rec.data + rec.key_len, rec.value_len)
            out[0] = 0x93
            out = _write_int(out + 1, rec.ms)
            out = _write_int(out, rec.counter)
            out = _write_str(out, node_data, node_size)
            if rec.flags & HAS_DEADLINE and not rec.flags & TOMBSTONE:
                out[0] = 0xCB
                memcpy(&raw, &rec.deadline, 8)
                _put_be(out + 1, raw, 8)
                out += 9
            else:
                out[0] = 0xC0
                out += 1
        out[0] = 0x90
        start[0] = end
        return payload


class JournaledCompactStore(Journaled, CompactStore):
    """The compact table, journaled (server/journaled_store.py)."""
