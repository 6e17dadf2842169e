//! A real `redis-server` process on a free loopback port (being written).

/// A `redis-server` child process owned by a test (being written).
#[derive(Debug)]
pub struct RedisServer {}
