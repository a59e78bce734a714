#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod check;
mod router;
mod table;

pub use check::{Cell, Failed, Observed, Passed, Problem};
pub use router::{Endpoint, PROBED_METHODS, RecordingRouter, RouteRecord};
pub use table::{Matrix, ParseError, Row};
