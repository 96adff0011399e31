//! Routing data: the file operators apply, how it is stored, and how an
//! event is resolved to its recipients.

pub mod apply;
pub mod file;
pub mod record;
pub mod resolve;

pub use apply::{ApplySummary, apply};
pub use file::{InvalidRouting, RoutingFile, ValidRouting};
pub use resolve::{RouteError, Routed, Router};
