"""One memory budget for message content, shared by the whole process.

Every per-connection bound holds (SIZE, the connection limits), but many
connections together can still hold ``max_connections x SIZE`` bytes of
message content.  A server with ``max_message_memory`` (a keyword of
:class:`smtpd_compat.limits.LimitsServerMixin`, ``--max-message-memory``)
charges every message's bytes to :data:`PROCESS_BUDGET` from the first
byte of DATA or BDAT content until the message is no longer held: answered
on the loop thread, or, when ``process_message`` runs in a worker thread,
until that work has ended (whatever became of it).  When less than
:data:`MIN_ROOM` is left, a new transaction gets ``452 4.3.1`` at DATA (RFC 3463: "mail system full"), and
a message whose content arrives while the budget is spent is read to its
end without being kept and refused with the same reply.

The count is process-wide (every server of the process with the option
shares it; each compares it with its own limit) and kept under a lock, so
servers in several threads may share it.  It is pure bookkeeping: it
never allocates or frees anything itself.
"""
import threading

__all__ = ['MessageBudget', 'PROCESS_BUDGET', 'INSUFFICIENT_STORAGE',
           'PIECE_OVERHEAD', 'MIN_ROOM']

#: The reply past the budget (RFC 3463 4.3.1: mail system full; RFC 5321
#: 452: insufficient system storage).
INSUFFICIENT_STORAGE = '452 4.3.1 Error: insufficient system storage'

#: Room a new message needs at DATA: one read's worth (asynchat reads
#: 65536 bytes at a time).  With less left, DATA gets 452 at once.
MIN_ROOM = 65536

#: Bytes charged per piece of content besides its length: a bytes object's
#: header and its slot in the buffer's list.  Short lines cost far more than
#: their length; counting this keeps the budget near the real memory.
PIECE_OVERHEAD = 48


class MessageBudget:
    """Bytes of message content held now (``used``), under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Bytes charged and not yet released.
        self.used = 0

    def charge(self, size: int, limit: int) -> bool:
        """Charge ``size`` bytes if ``used`` stays within ``limit``
        (True); else charge nothing (False)."""
        with self._lock:
            if self.used + size > limit:
                return False
            self.used += size
            return True

    def release(self, size: int) -> None:
        """Give back ``size`` bytes charged earlier."""
        if size:
            with self._lock:
                self.used -= size

    def full(self, limit: int) -> bool:
        """True when a new message would not fit under ``limit``: less
        than :data:`MIN_ROOM` is left."""
        return self.used + MIN_ROOM > limit


#: The budget of this process (a forked worker starts with the parent's
#: count, which is 0 when it forks before serving).
PROCESS_BUDGET = MessageBudget()
