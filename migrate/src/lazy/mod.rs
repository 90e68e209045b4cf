//! Post-copy: MOSE's own lazy page transfer. CRIU restores a container with
//! its private anonymous memory missing and hands each process's userfaultfd
//! to MOSE's [`handler`], which places pages as they come from the source
//! (answers to faults first, then a background push) or, for hybrid, from the
//! blocks pre-copy rounds already brought. The source serves those pages from
//! CRIU's lazy page server ([`criu_page_server`]) or, where a lazy dump
//! cannot run ([`source`]), from a full dump in tmpfs.

pub mod criu_page_server;
pub mod handler;
pub mod iov;
pub mod pagemap;
pub mod source;
pub mod uffd;

pub use criu_page_server::{IovLayout, PageServerClient, PageServerError};
pub use handler::{Delivery, Handler, Origin, Report};
pub use pagemap::{LazyLayout, LazyProcess, LazyRun, Pagemap};
pub use source::LazySource;
