//! Live sessions: the manager that decides, the actor that carries out, the sessions that
//! stream.

pub mod actor;
pub mod catalog;
pub mod manager;
pub mod session;
