//! PostgreSQL for the likes service: schema, embedded migrations, the bb8
//! connection pool (over TLS as the URL's `sslmode` says, see [`tls`]) and
//! every query either binary runs.

mod circuit;
pub mod error;
pub mod models;
pub mod pool;
pub mod recount;
pub mod replicas;
pub mod repository;
pub mod schema;
pub mod tls;

pub use error::DbError;
pub use models::{Action, CountChange, LikeChange, VersionedCount, WriteOutcome};
pub use pool::{
    MIGRATION_LOCK_KEY, PgPool, PooledConnection, check_migrated, checkout, connect,
    ensure_database, run_migrations, spawn_pool_gauges,
};
pub use replicas::ReadPools;
pub use tls::{Target, establish};
