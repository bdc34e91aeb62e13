//! Errors of the api and their one mapping to gRPC statuses.
//!
//! Callers get a message they can act on; the underlying detail of broker and
//! database failures is logged here, once, and not sent to them.
//!
//! Every status also carries machine-readable details (`google.rpc` messages
//! in `grpc-status-details-bin`, read with `tonic_types::StatusExt` or any
//! language's richer-error helpers), so that callers need not parse messages:
//! - INVALID_ARGUMENT: a `BadRequest` naming each field that is wrong (e.g.
//!   `user_id`, `post_ids[3]`) with a `reason` such as `EMPTY`;
//! - UNAVAILABLE and the overload kinds of RESOURCE_EXHAUSTED: a `RetryInfo`
//!   with the delay after which a retry is worth it, the same delay as
//!   `grpc-retry-pushback-ms` metadata (what gRPC's built-in retry policy
//!   honours), and an `ErrorInfo` whose `reason` says what failed.
//!
//! A RESOURCE_EXHAUSTED without `RetryInfo` (a request over
//! [`crate::MAX_REQUEST_BYTES`]) will fail the same way again: do not retry it.

use likes_common::ids::IdError;
use likes_db::DbError;
use likes_queue::PublishError;
use std::time::Duration;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// The `ErrorInfo.domain` of every error of this service.
pub const ERROR_DOMAIN: &str = "likes.v1";

/// The retry delay suggested when the broker cannot take or confirm a
/// message: the publisher reconnects within about a second (its backoff
/// starts at 100 ms) and replaces a link the broker refused on within one.
pub const RETRY_AFTER_BROKER: Duration = Duration::from_secs(1);

/// The retry delay suggested when the database cannot be read: how long the
/// pool's circuit stays open, after which the api tries PostgreSQL again.
pub const RETRY_AFTER_DATABASE: Duration = Duration::from_millis(500);

/// The retry delay suggested when the server is at one of its admission
/// limits: calls take milliseconds, so places free up quickly.
pub const RETRY_AFTER_OVERLOAD: Duration = Duration::from_millis(100);

/// The retry delay suggested when the api serves its limit of streams:
/// streams last, so places free up slowly; another api may have room.
pub const RETRY_AFTER_STREAMS: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{} {source}", field_path(field, *index))]
    InvalidId {
        field: &'static str,
        /// The position in a repeated field (`post_ids`).
        index: Option<usize>,
        #[source]
        source: IdError,
    },
    #[error("post_ids holds {count} ids; at most {max} are allowed per call")]
    TooManyIds { count: usize, max: usize },
    #[error("page_size {0} is negative")]
    NegativePageSize(i32),
    #[error("page_token is not a token this service gave for this post: {0}")]
    PageToken(&'static str),
    #[error(
        "the server is serving its limit of {limit} WatchLikeCounts streams; retry with backoff"
    )]
    TooManyStreams { limit: usize },
    #[error("the server is handling its limit of {limit} requests; retry with backoff")]
    Overloaded { limit: usize },
    #[error("the server is receiving its limit of {budget} request bytes; retry with backoff")]
    RequestBytesBudget { budget: usize },
    #[error(
        "the server is full and this call's request did not arrive within {} ms; retry with backoff",
        grace.as_millis()
    )]
    RequestTooSlow { grace: Duration },
    #[error("could not enqueue the request: {0}")]
    Publish(#[from] PublishError),
    #[error("could not read the database: {0}")]
    Database(#[from] DbError),
}

fn field_path(field: &str, index: Option<usize>) -> String {
    match index {
        Some(index) => format!("{field}[{index}]"),
        None => field.to_owned(),
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match &error {
            ApiError::InvalidId {
                field,
                index,
                source,
            } => {
                let violation = FieldViolation {
                    reason: id_error_reason(source).to_owned(),
                    ..FieldViolation::new(field_path(field, *index), source.to_string())
                };
                with_details(
                    Code::InvalidArgument,
                    error.to_string(),
                    ErrorDetails::with_bad_request(vec![violation]),
                )
            }
            ApiError::TooManyIds { .. } => {
                let violation = FieldViolation {
                    reason: "TOO_MANY".to_owned(),
                    ..FieldViolation::new("post_ids", error.to_string())
                };
                with_details(
                    Code::InvalidArgument,
                    error.to_string(),
                    ErrorDetails::with_bad_request(vec![violation]),
                )
            }
            ApiError::NegativePageSize(_) => with_details(
                Code::InvalidArgument,
                error.to_string(),
                ErrorDetails::with_bad_request(vec![FieldViolation {
                    reason: "NEGATIVE".to_owned(),
                    ..FieldViolation::new("page_size", error.to_string())
                }]),
            ),
            ApiError::PageToken(_) => with_details(
                Code::InvalidArgument,
                error.to_string(),
                ErrorDetails::with_bad_request(vec![FieldViolation {
                    reason: "INVALID_PAGE_TOKEN".to_owned(),
                    ..FieldViolation::new("page_token", error.to_string())
                }]),
            ),
            ApiError::TooManyStreams { .. } => retryable(
                Code::ResourceExhausted,
                error.to_string(),
                "TOO_MANY_STREAMS",
                RETRY_AFTER_STREAMS,
            ),
            ApiError::Overloaded { .. } => retryable(
                Code::ResourceExhausted,
                error.to_string(),
                "OVERLOADED",
                RETRY_AFTER_OVERLOAD,
            ),
            ApiError::RequestBytesBudget { .. } => retryable(
                Code::ResourceExhausted,
                error.to_string(),
                "REQUEST_BYTES_BUDGET",
                RETRY_AFTER_OVERLOAD,
            ),
            ApiError::RequestTooSlow { .. } => retryable(
                Code::ResourceExhausted,
                error.to_string(),
                "REQUEST_TOO_SLOW",
                RETRY_AFTER_OVERLOAD,
            ),
            ApiError::Publish(publish) => {
                // A blocked link is logged once, when it blocks, not per call.
                if matches!(publish, PublishError::Blocked(_)) {
                    tracing::debug!(error = %publish, "publish refused");
                } else {
                    tracing::warn!(error = %publish, "publish failed");
                }
                retryable(
                    Code::Unavailable,
                    format!(
                        "the request was not stored ({}); it is safe to retry",
                        publish.caller_reason()
                    ),
                    publish_error_reason(publish),
                    RETRY_AFTER_BROKER,
                )
            }
            // A busy pool is an overload, answered like one.
            ApiError::Database(DbError::PoolBusy) => retryable(
                Code::ResourceExhausted,
                "the server's database connections are all busy; retry with backoff".to_owned(),
                "OVERLOADED",
                RETRY_AFTER_OVERLOAD,
            ),
            ApiError::Database(db) if db.is_transient() => {
                // The circuit logs the outage once; each read it fails does not.
                if matches!(db, DbError::Unavailable) {
                    tracing::debug!(error = %db, "database read refused");
                } else {
                    tracing::warn!(error = %db, "database read failed");
                }
                retryable(
                    Code::Unavailable,
                    "the database is unavailable; retry later".to_owned(),
                    "DATABASE_UNAVAILABLE",
                    RETRY_AFTER_DATABASE,
                )
            }
            ApiError::Database(db) => {
                tracing::error!(error = %db, "database read failed");
                Status::internal("internal error")
            }
        }
    }
}

/// A status worth retrying after `delay`: `RetryInfo` and `ErrorInfo`
/// details, and the delay as `grpc-retry-pushback-ms` for gRPC's retry policy.
fn retryable(code: Code, message: String, reason: &str, delay: Duration) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(delay));
    details.set_error_info(
        reason,
        ERROR_DOMAIN,
        std::collections::HashMap::<String, String>::new(),
    );
    let mut status = with_details(code, message, details);
    if let Ok(pushback) = delay.as_millis().to_string().parse() {
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", pushback);
    }
    status
}

fn with_details(code: Code, message: String, details: ErrorDetails) -> Status {
    Status::with_error_details(code, message, details)
}

/// `FieldViolation.reason` of an id that breaks the rules.
fn id_error_reason(error: &IdError) -> &'static str {
    match error {
        IdError::Empty => "EMPTY",
        IdError::TooLong(_) => "TOO_LONG",
        IdError::ControlCharacter(_) => "CONTROL_CHARACTER",
    }
}

/// `ErrorInfo.reason` of a failed publish.
fn publish_error_reason(error: &PublishError) -> &'static str {
    match error {
        PublishError::NotConnected | PublishError::Broker(_) => "BROKER_UNREACHABLE",
        PublishError::Blocked(_) => "BROKER_BLOCKED",
        PublishError::ConfirmTimeout(_) => "BROKER_CONFIRM_TIMEOUT",
        PublishError::Nacked => "BROKER_REFUSED",
        PublishError::Unroutable(_) | PublishError::Topology(_) => "QUEUE_MISSING",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_id_names_its_field_in_a_bad_request() {
        let status = Status::from(ApiError::InvalidId {
            field: "post_ids",
            index: Some(3),
            source: IdError::Empty,
        });
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "post_ids[3] must not be empty");
        let details = status.get_error_details();
        let violations = &details
            .bad_request()
            .expect("a BadRequest")
            .field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "post_ids[3]");
        assert_eq!(violations[0].reason, "EMPTY");
        assert_eq!(violations[0].description, "must not be empty");
        assert!(details.retry_info().is_none(), "not worth retrying");
    }

    #[test]
    fn unavailable_carries_a_retry_delay_and_a_reason() {
        let status = Status::from(ApiError::Publish(PublishError::NotConnected));
        assert_eq!(status.code(), Code::Unavailable);
        let details = status.get_error_details();
        assert_eq!(
            details.retry_info().and_then(|r| r.retry_delay),
            Some(RETRY_AFTER_BROKER)
        );
        assert_eq!(
            details.error_info().map(|i| i.reason.as_str()),
            Some("BROKER_UNREACHABLE")
        );
        assert_eq!(
            status
                .metadata()
                .get("grpc-retry-pushback-ms")
                .and_then(|v| v.to_str().ok()),
            Some("1000")
        );
    }

    #[test]
    fn overload_is_resource_exhausted_with_a_short_retry_delay() {
        let status = Status::from(ApiError::Overloaded { limit: 8 });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status
                .get_error_details()
                .retry_info()
                .and_then(|r| r.retry_delay),
            Some(RETRY_AFTER_OVERLOAD)
        );
    }

    #[test]
    fn details_survive_the_trip_through_http_headers() {
        // Admission answers trailers-only responses built from the status.
        let response = Status::from(ApiError::RequestTooSlow {
            grace: Duration::from_millis(200),
        })
        .into_http::<tonic::body::Body>();
        let status = Status::from_header_map(response.headers()).expect("a status");
        assert_eq!(status.code(), Code::ResourceExhausted);
        let details = status.get_error_details();
        assert_eq!(
            details.error_info().map(|i| i.reason.as_str()),
            Some("REQUEST_TOO_SLOW")
        );
        assert!(details.retry_info().is_some());
    }
}
