//! The answers of [`Misanswer`]: what a broken proxy, a wrong host or a misbehaving service sends back.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Frame;
use serde_json::json;

use super::clock::random_guid;
use super::config::Misanswer;

/// What an endless body repeats: JSON whitespace, so only its size gives it away.
static CHUNK: [u8; 64 * 1024] = [b' '; 64 * 1024];

/// A body that never ends: chunk after chunk for as long as the client reads.
struct Endless {
    started: bool,
}

impl hyper::body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let data = if self.started { Bytes::from_static(&CHUNK) } else { Bytes::from_static(b"{\"value\": [") };
        self.started = true;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

/// The answer `misanswer` stands for.
pub(crate) fn response(misanswer: &Misanswer) -> Response {
    let json_type = HeaderValue::from_static("application/json; odata.metadata=minimal");
    match misanswer {
        Misanswer::ErrorWith200 => {
            let body = json!({"error": {
                "code": "InternalServerError",
                "message": "An error occurred (simulated, answered with 200).",
                "target": random_guid(),
            }});
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Misanswer::Html(status) => (
            StatusCode::from_u16(*status).unwrap_or(StatusCode::OK),
            [(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"))],
            "<html><head><title>Sign in</title></head>\n<body><p>Simulated page.</p></body></html>\n",
        )
            .into_response(),
        Misanswer::NotJson => {
            (StatusCode::OK, [(header::CONTENT_TYPE, json_type)], "this is not JSON (simulated)").into_response()
        }
        Misanswer::Empty201 => (StatusCode::CREATED, [(header::CONTENT_TYPE, json_type)], "").into_response(),
        Misanswer::Redirect { status, location } => {
            let mut response = StatusCode::from_u16(*status).unwrap_or(StatusCode::FOUND).into_response();
            if let Ok(location) = HeaderValue::from_str(location) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        Misanswer::Endless => {
            (StatusCode::OK, [(header::CONTENT_TYPE, json_type)], Body::new(Endless { started: false })).into_response()
        }
    }
}
