//! Errors of the api and their one mapping to gRPC statuses.
//!
//! Callers get a message they can act on; the underlying detail of broker and
//! database failures is logged here, once, and not sent to them.

use likes_common::ids::IdError;
use likes_db::DbError;
use likes_queue::PublishError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field} {source}")]
    InvalidId {
        field: &'static str,
        #[source]
        source: IdError,
    },
    #[error("post_ids holds {count} ids; at most {max} are allowed per call")]
    TooManyIds { count: usize, max: usize },
    #[error("the server is handling its limit of {limit} requests; retry with backoff")]
    Overloaded { limit: usize },
    #[error("could not enqueue the request: {0}")]
    Publish(#[from] PublishError),
    #[error("could not read the database: {0}")]
    Database(#[from] DbError),
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match &error {
            ApiError::InvalidId { .. } | ApiError::TooManyIds { .. } => {
                Status::invalid_argument(error.to_string())
            }
            ApiError::Overloaded { .. } => Status::resource_exhausted(error.to_string()),
            ApiError::Publish(publish) => {
                tracing::warn!(error = %publish, "publish failed");
                Status::unavailable(format!(
                    "the request was not stored ({}); it is safe to retry",
                    publish.caller_reason()
                ))
            }
            ApiError::Database(db) if db.is_transient() => {
                tracing::warn!(error = %db, "database read failed");
                Status::unavailable("the database is unavailable; retry later")
            }
            ApiError::Database(db) => {
                tracing::error!(error = %db, "database read failed");
                Status::internal("internal error")
            }
        }
    }
}
