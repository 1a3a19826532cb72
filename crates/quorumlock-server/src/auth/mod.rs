//! Authentication and authorization: who a caller is (a client
//! certificate's name, a bearer token, or the identity a forwarding member
//! vouches for) and what the access policy lets that identity do.
//!
//! Authentication is on when a node has an access policy (`serve
//! --auth-policy`). Without one, every caller is anonymous and a session's
//! secret alone proves its owner.

mod access;
mod caller;
pub mod policy;
pub mod rate;

pub use access::Access;
pub use caller::{Caller, Source};
pub use policy::{Action, Policy, PolicySummary};
pub use rate::{DigestLimiter, DIGESTS_BURST, DIGESTS_PER_SECOND};

/// The tracing target of audit lines: every refusal and every admin call.
pub const AUDIT_TARGET: &str = "quorumlock::audit";
