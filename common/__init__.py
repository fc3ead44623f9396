"""What the memlookup server and its clients must agree on.

The wire protocol (:mod:`common.protocol`), the limits both sides enforce
(:mod:`common.limits`), the error hierarchy (:mod:`common.errors`) and how a
node address is written (:mod:`common.address`). Nothing here opens a socket.
"""

__version__ = "0.1.0"
