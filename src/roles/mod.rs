//! The three PEC roles and the tracker of the sending side, and what they
//! share: the ports (traits the edges implement) and the message types.

pub mod access;
pub mod delivery;
pub mod reception;
pub mod tracking;
