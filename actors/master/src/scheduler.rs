//! The Mesos half of the master, by its former path: the allocation rounds, offers and
//! framework calls live in [`crate::core`]; `get frameworks` is [`ListFrameworks`].

pub use crate::core::{FrameworkSummary, DEPLOYMENTS_ROLE};
pub use crate::master::ListFrameworks;
