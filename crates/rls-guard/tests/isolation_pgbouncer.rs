//! The whole isolation suite of `tests/isolation.rs` again, with every runtime connection going
//! through PgBouncer in transaction-pooling mode (fewer server connections than clients, so
//! server connections are shared between clients and between consecutive transactions of one
//! client). `common::fixture` sees this binary's name and routes its pools through PgBouncer.
//! This proves the binding is transaction-local in the way that matters for poolers: nothing a
//! transaction binds, and nothing a plain `SET` inside it sets, reaches the next client.

#[path = "isolation.rs"]
mod suite;
