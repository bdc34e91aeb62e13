//! Errors of the database layer.

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// What went wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("no PostgreSQL connection available: {0}")]
    Pool(String),
    #[error("PostgreSQL was unreachable moments ago (circuit open)")]
    Unavailable,
    #[error("no answer from PostgreSQL within {0:?}")]
    TimedOut(std::time::Duration),
    /// Every pooled connection stayed in use for the whole checkout wait:
    /// an overload, not an outage.
    #[error("every PostgreSQL connection of the pool is busy")]
    PoolBusy,
    #[error("query failed: {0}")]
    Query(#[from] DieselError),
    #[error("migrations failed: {0}")]
    Migration(String),
    #[error("invalid database url {url}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    /// `database.migrate_on_start` is off and migrations are pending.
    #[error(
        "the database lacks migrations {pending:?}: run `likes-admin migrate` \
         (database.migrate_on_start is false)"
    )]
    NotMigrated { pending: Vec<String> },
}

impl DbError {
    /// Whether the pooled connection the query ran on was found closed (the
    /// server restarted or failed over): the pool drops it, and the next
    /// checkout may get a good one at once, so this one is worth retrying
    /// without waiting.
    pub fn is_broken_connection(&self) -> bool {
        matches!(
            self,
            Self::Query(DieselError::DatabaseError(
                DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::ClosedConnection,
                _
            ))
        )
    }

    /// Whether trying again later may succeed: lost connections, pool
    /// timeouts, deadlocks, serialization failures, a server shutting down.
    /// Constraint violations and bad data fail the same way every time.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect(_)
            | Self::Pool(_)
            | Self::Unavailable
            | Self::TimedOut(_)
            | Self::PoolBusy => true,
            Self::Query(DieselError::DatabaseError(kind, _)) => !matches!(
                kind,
                DatabaseErrorKind::UniqueViolation
                    | DatabaseErrorKind::ForeignKeyViolation
                    | DatabaseErrorKind::NotNullViolation
                    | DatabaseErrorKind::CheckViolation
                    | DatabaseErrorKind::RestrictViolation
                    | DatabaseErrorKind::ExclusionViolation
            ),
            Self::Query(
                DieselError::BrokenTransactionManager | DieselError::AlreadyInTransaction,
            ) => true,
            Self::Query(_)
            | Self::Migration(_)
            | Self::InvalidUrl { .. }
            | Self::NotMigrated { .. } => false,
        }
    }
}

impl<E: std::error::Error + 'static> From<bb8::RunError<E>> for DbError {
    fn from(error: bb8::RunError<E>) -> Self {
        Self::Pool(error.to_string())
    }
}
