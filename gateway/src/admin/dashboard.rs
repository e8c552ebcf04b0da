//! The dashboard: a few pages of HTML, CSS and JavaScript compiled into the binary and
//! served at `/` and `/assets/{name}`, as EMQX serves its own at the root of its port. The
//! pages read the `/api/v5` API from the browser with the operator's API key, so they hold
//! no authority of their own and are served to anyone who may reach the port.
//!
//! What they show comes from devices (client ids, user names, topics): the scripts only
//! ever put it into the page as text, and every answer carries a Content-Security-Policy
//! that allows scripts, styles and requests from this origin alone, nothing inline, and no
//! framing, so that text slipping into markup would still run nothing.

use axum::extract::Path;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// One file of the dashboard.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// Every file there is: a request names one of these or gets 404, so no request path ever
/// reaches a file system.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../dashboard/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../dashboard/style.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../dashboard/icon.svg"),
    },
];

const INDEX: &[u8] = include_bytes!("../../dashboard/index.html");

/// Scripts, styles, images and requests from this origin only; no plugins, no `<base>`, no
/// form posted anywhere, never inside a frame (clickjacking on the Kick buttons).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn security_headers() -> [(HeaderName, HeaderValue); 5] {
    [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        // A new binary may bring new files under the same names.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ]
}

fn file(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        security_headers(),
        [(header::CONTENT_TYPE, content_type)],
        body,
    )
        .into_response()
}

/// The dashboard's page.
pub async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// One of the dashboard's files, by name.
pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|asset| asset.name == name) {
        Some(asset) => file(asset.content_type, asset.body),
        None => (
            StatusCode::NOT_FOUND,
            security_headers(),
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such file\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_served() {
        let page = std::str::from_utf8(INDEX).unwrap_or_default();
        for asset in ASSETS {
            assert!(
                page.contains(&format!("/assets/{}", asset.name)),
                "{} is not named by the page",
                asset.name
            );
        }
    }

    #[test]
    fn the_page_has_nothing_inline_the_policy_would_refuse() {
        let page = std::str::from_utf8(INDEX).unwrap_or_default();
        assert!(!page.contains("<style"));
        assert!(!page.contains("style="));
        assert!(!page.contains("<script>"));
        let handler = page
            .split(char::is_whitespace)
            .find(|word| word.starts_with("on") && word.contains('='));
        assert_eq!(handler, None, "an inline event handler");
    }
}
