//! MOSE wire protocol.
