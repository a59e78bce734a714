//! Cross-crate integration tests live in `tests/tests/`; this library is intentionally empty.
#![forbid(unsafe_code)]
