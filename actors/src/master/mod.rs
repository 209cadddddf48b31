//! The Master: membership keeper, certificate authority and (later) allocator. Its state
//! lives behind [`state::StateStore`].

pub mod membership;
pub mod state;
pub mod token;
