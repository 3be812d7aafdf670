//! Issue 10, "Promises kept under attack": each promise the README makes, tried
//! as an attacker would, against the real binary. One test binary, one module
//! per concern (access, memory and time, integrity, supervision).

#[path = "attacks/access.rs"]
mod access;
#[path = "attacks/integrity.rs"]
mod integrity;
#[path = "attacks/streams.rs"]
mod streams;
#[path = "attacks/supervisor.rs"]
mod supervisor;
#[path = "attacks/worker.rs"]
mod worker;
