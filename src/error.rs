//! The portal plane's error type: what the user sees is separate from what is logged, and the
//! log line is written once, here.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("forbidden")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("the form was out of date (CSRF token did not match)")]
    Csrf,
    /// A refusal the user must understand: a deadline passed, a gate not met. Status, title
    /// and text as shown.
    #[error("{1}")]
    Refused(StatusCode, String, String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> AppError {
        AppError::Unexpected(e.into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, title, text): (StatusCode, &str, &str) = match &self {
            AppError::Forbidden => (
                StatusCode::FORBIDDEN,
                "You do not have permission to view this page",
                "Your account does not have the permission this page needs. Ask your account manager.",
            ),
            AppError::NotFound => (
                StatusCode::NOT_FOUND,
                "Page not found",
                "If you typed the web address, check it is correct.",
            ),
            AppError::Csrf => (
                StatusCode::FORBIDDEN,
                "This form has expired",
                "Go back, reload the page and try again.",
            ),
            AppError::Refused(status, title, text) => (*status, title, text),
            AppError::Unexpected(e) => {
                tracing::error!(error = %e, "unexpected error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Sorry, there is a problem with the service",
                    "Try again later.",
                )
            }
        };
        let page = crate::portal::ErrorPage { title, text };
        (
            status,
            Html(askama::Template::render(&page).unwrap_or_default()),
        )
            .into_response()
    }
}
