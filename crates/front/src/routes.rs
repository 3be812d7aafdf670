//! Every route of the front, parsed once from the request path and then used
//! for dispatch, authorization and the metric label: a route is added here,
//! in one place, and `TABLE` (checked against `openapi.json` by a test) lists it.

use http::Method;

/// A request's route. Ids are kept as the client sent them; they are
/// validated where they reach the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/`: the dashboard page.
    Index,
    /// `/upload`.
    Upload,
    /// `/health`: liveness.
    Health,
    /// `/readyz`: readiness.
    Readyz,
    /// `/stats`: the admin process's summary.
    Stats,
    /// `/jobs/<id>`.
    Job(String),
    /// `/jobs/<id>/events`.
    JobEvents(String),
    /// `/images/<id>/<preset>`.
    Image {
        /// The job id.
        id: String,
        /// The preset name.
        preset: String,
    },
    /// Anything else.
    NotFound,
}

/// Every route as an OpenAPI path template with its methods (`HEAD` where a
/// `GET` has one): what the server answers, for the document's test.
pub const TABLE: &[(&str, &[&str])] = &[
    ("/", &["GET", "HEAD"]),
    ("/upload", &["POST"]),
    ("/health", &["GET", "HEAD"]),
    ("/readyz", &["GET", "HEAD"]),
    ("/stats", &["GET"]),
    ("/jobs/{id}", &["GET", "DELETE"]),
    ("/jobs/{id}/events", &["GET"]),
    ("/images/{id}/{preset}", &["GET", "HEAD"]),
];

impl Route {
    /// The route of `path` (leading slashes are one, as before).
    pub fn parse(path: &str) -> Route {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            [""] => Route::Index,
            ["upload"] => Route::Upload,
            ["health"] => Route::Health,
            ["readyz"] => Route::Readyz,
            ["stats"] => Route::Stats,
            ["jobs", id] => Route::Job((*id).to_string()),
            ["jobs", id, "events"] => Route::JobEvents((*id).to_string()),
            ["images", id, preset] => Route::Image {
                id: (*id).to_string(),
                preset: (*preset).to_string(),
            },
            _ => Route::NotFound,
        }
    }

    /// The bounded `route` label of the request metrics (never the raw path:
    /// ids would explode the series).
    pub fn label(&self) -> &'static str {
        match self {
            Route::Index => "index",
            Route::Upload => "upload",
            Route::Health => "health",
            Route::Readyz => "readyz",
            Route::Stats => "stats",
            Route::Job(_) => "job",
            Route::JobEvents(_) => "job_events",
            Route::Image { .. } => "image",
            Route::NotFound => "other",
        }
    }

    /// Whether the route needs a token when tokens are configured. The probes
    /// stay open (load balancers and systemd have none), and so does the page
    /// (static; everything it fetches asks for the token).
    pub fn needs_token(&self) -> bool {
        !matches!(self, Route::Health | Route::Readyz | Route::Index)
    }

    /// The methods the route answers, as an `Allow` header value; `None` for
    /// [`Route::NotFound`].
    pub fn allow(&self) -> Option<&'static str> {
        match self {
            Route::Upload => Some("POST"),
            Route::Stats | Route::JobEvents(_) => Some("GET"),
            Route::Job(_) => Some("GET, DELETE"),
            Route::Index | Route::Health | Route::Readyz | Route::Image { .. } => Some("GET, HEAD"),
            Route::NotFound => None,
        }
    }

    /// Whether a request counts against the client's rate (`--rate-limit`): uploads
    /// and deletions; never the probes, the page or a read.
    pub fn is_rate_limited(&self, method: &Method) -> bool {
        match self {
            Route::Upload => true,
            Route::Job(_) => method == Method::DELETE,
            _ => false,
        }
    }

    /// Whether the route answers `method`.
    pub fn allows(&self, method: &Method) -> bool {
        self.allow()
            .is_some_and(|allow| allow.split(", ").any(|m| m == method.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each entry of [`TABLE`], filled in, parses to a route that allows
    /// exactly the listed methods: the table and the parser cannot drift.
    #[test]
    fn the_table_and_the_parser_agree() {
        let all = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
        for (template, methods) in TABLE {
            let path = template.replace("{id}", "abc").replace("{preset}", "thumb");
            let route = Route::parse(&path);
            assert_ne!(route, Route::NotFound, "{template}");
            for m in all {
                let method = Method::from_bytes(m.as_bytes()).expect("method");
                assert_eq!(
                    route.allows(&method),
                    methods.contains(&m),
                    "{template} {m}"
                );
            }
        }
    }

    #[test]
    fn odd_paths_route_as_before() {
        assert_eq!(Route::parse("//stats"), Route::Stats);
        assert_eq!(Route::parse("/stats/"), Route::NotFound);
        assert_eq!(Route::parse("/jobs/x/y"), Route::NotFound);
        assert_eq!(Route::parse("/images/a/b/c"), Route::NotFound);
        assert!(Route::parse("/stats").needs_token());
        assert!(!Route::parse("/health").needs_token());
        assert_eq!(Route::parse("/nope").label(), "other");
    }
}
