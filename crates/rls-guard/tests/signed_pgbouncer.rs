//! The signed-binding suite of `tests/signed.rs` again, with every runtime connection going
//! through PgBouncer in transaction-pooling mode: the binding (`BEGIN`, then `app.bind` as a
//! prepared statement in the transaction) and the proof tied to the server connection and
//! transaction hold when server connections are shared between clients.

#[path = "signed.rs"]
mod suite;
