//! [`ConnLimits`]: what one connection of a kind of listener may hold. The
//! proxy's are configured (`max_connections`, `max_header_bytes`,
//! `idle_timeout`, read by [`crate::config`]); the admin listener's are fixed.

use std::time::Duration;

/// Connection limits of one kind of listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Open connections at most. At the cap a proxy listener stops accepting
    /// and new connections wait in the kernel's listen backlog; the admin
    /// listener accepts and closes its oldest connection instead.
    pub max_connections: usize,
    /// Request line plus headers, in bytes; a larger request head is answered
    /// `431 Request Header Fields Too Large` and the connection closed.
    pub max_header_bytes: usize,
    /// How long a connection may wait for the next complete request head
    /// (idle keep-alive, or headers trickling in) before it is closed.
    pub idle_timeout: Duration,
}

impl ConnLimits {
    /// Route listeners and the forward proxy, unless configured otherwise.
    pub const PROXY: ConnLimits = ConnLimits {
        max_connections: 512,
        max_header_bytes: 64 * 1024,
        idle_timeout: Duration::from_secs(30),
    };

    /// The admin listener.
    pub const ADMIN: ConnLimits = ConnLimits {
        max_connections: 16,
        max_header_bytes: 8 * 1024,
        idle_timeout: Duration::from_secs(10),
    };
}
