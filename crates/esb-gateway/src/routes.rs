//! Routing of client requests to functions, from the template's `Api` / `HttpApi` events.
//!
//! Paths are served without a stage prefix. `{name}` matches one segment, `{name+}` one or
//! more trailing segments, `$default` (HttpApi) anything no other route takes. The most
//! specific route wins: literal segments over parameters over greedy parameters, then the
//! longer path, then a named method over `ANY`.

use std::cmp::Ordering;

use esb_template::EventKind;

/// One segment of a route path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Param(String),
    Greedy(String),
}

impl Seg {
    fn rank(&self) -> u8 {
        match self {
            Seg::Lit(_) => 3,
            Seg::Param(_) => 2,
            Seg::Greedy(_) => 1,
        }
    }
}

/// A route of the router.
#[derive(Debug, Clone)]
pub struct Route {
    /// Upper-case method, or `None` for `ANY`.
    pub method: Option<String>,
    /// The path as written in the template (`/items/{id}`, `$default`).
    pub path: String,
    /// Which event format the function gets.
    pub kind: EventKind,
    /// Index of the function in the gateway's function list.
    pub function: usize,
    /// Whether the route needs `Authorization: Bearer <IdToken>`.
    pub auth: bool,
    segs: Vec<Seg>,
    default: bool,
}

impl Route {
    /// A route; `path` is the template's (`/a/{b}/{c+}` or `$default`).
    pub fn new(
        method: &str,
        path: &str,
        kind: EventKind,
        function: usize,
        auth: bool,
    ) -> Result<Route, String> {
        let method = method.trim().to_ascii_uppercase();
        let method = if method == "ANY" || method == "X-AMAZON-APIGATEWAY-ANY-METHOD" {
            None
        } else if !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase()) {
            Some(method)
        } else {
            return Err(format!("bad method {method:?}"));
        };
        let default = path == "$default";
        let mut segs = Vec::new();
        if !default {
            if !path.starts_with('/') {
                return Err(format!("path {path:?} must start with '/'"));
            }
            let parts: Vec<&str> = path.split('/').skip(1).filter(|s| !s.is_empty()).collect();
            for (i, p) in parts.iter().enumerate() {
                if let Some(inner) = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    if let Some(name) = inner.strip_suffix('+') {
                        if i + 1 != parts.len() {
                            return Err(format!("greedy {p} must end the path {path:?}"));
                        }
                        segs.push(Seg::Greedy(name.to_string()));
                    } else if inner.is_empty() {
                        return Err(format!("empty parameter in {path:?}"));
                    } else {
                        segs.push(Seg::Param(inner.to_string()));
                    }
                } else {
                    segs.push(Seg::Lit(p.to_string()));
                }
            }
        }
        Ok(Route {
            method,
            path: path.to_string(),
            kind,
            function,
            auth,
            segs,
            default,
        })
    }

    /// `GET /items/{id}` (HttpApi route key; `ANY` for any method, `$default` alone).
    pub fn route_key(&self) -> String {
        if self.default {
            return "$default".into();
        }
        format!("{} {}", self.method.as_deref().unwrap_or("ANY"), self.path)
    }

    /// Binds the path's parameters if it matches (ignoring the method).
    fn bind(&self, parts: &[&str]) -> Option<Vec<(String, String)>> {
        if self.default {
            return Some(Vec::new());
        }
        let mut params = Vec::new();
        for (i, seg) in self.segs.iter().enumerate() {
            match seg {
                Seg::Lit(l) => {
                    if parts.get(i).map(|p| decode(p)) != Some(l.clone()) {
                        return None;
                    }
                }
                Seg::Param(n) => params.push((n.clone(), decode(parts.get(i)?))),
                Seg::Greedy(n) => {
                    if parts.len() <= i {
                        return None;
                    }
                    params.push((n.clone(), decode(&parts[i..].join("/"))));
                    return Some(params);
                }
            }
        }
        (parts.len() == self.segs.len()).then_some(params)
    }

    fn specificity(&self, other: &Route) -> Ordering {
        // `$default` is the least specific of all.
        match (self.default, other.default) {
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }
        for (a, b) in self.segs.iter().zip(other.segs.iter()) {
            match a.rank().cmp(&b.rank()) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        self.segs
            .len()
            .cmp(&other.segs.len())
            .then_with(|| self.method.is_some().cmp(&other.method.is_some()))
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The result of routing a request.
#[derive(Debug)]
pub enum Match<'r> {
    /// A route took it, with the bound path parameters.
    Found(&'r Route, Vec<(String, String)>),
    /// Some route has this path, but not for this method; the allowed methods.
    MethodNotAllowed(Vec<String>),
    /// No route has this path.
    NotFound,
}

/// All routes of the box.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// A router over these routes (order irrelevant).
    pub fn new(mut routes: Vec<Route>) -> Router {
        // Most specific first: the first match wins.
        routes.sort_by(|a, b| b.specificity(a));
        Router { routes }
    }

    /// The routes, most specific first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Finds the route for `method path` (`path` without query, percent-encoded).
    pub fn find(&self, method: &str, path: &str) -> Match<'_> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut allowed = Vec::new();
        for r in &self.routes {
            let Some(params) = r.bind(&parts) else {
                continue;
            };
            match &r.method {
                None => return Match::Found(r, params),
                Some(m) if m == method => return Match::Found(r, params),
                Some(m) if method == "HEAD" && m == "GET" => return Match::Found(r, params),
                Some(m) => {
                    if !r.default && !allowed.contains(m) {
                        allowed.push(m.clone());
                    }
                }
            }
        }
        if allowed.is_empty() {
            Match::NotFound
        } else {
            Match::MethodNotAllowed(allowed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(m: &str, p: &str, f: usize) -> Route {
        Route::new(m, p, EventKind::Api, f, true).unwrap()
    }

    fn found(router: &Router, m: &str, p: &str) -> (usize, Vec<(String, String)>) {
        match router.find(m, p) {
            Match::Found(r, params) => (r.function, params),
            other => panic!("{m} {p}: {other:?}"),
        }
    }

    #[test]
    fn most_specific_wins() {
        let router = Router::new(vec![
            r("ANY", "/{proxy+}", 0),
            r("GET", "/items/{id}", 1),
            r("GET", "/items/special", 2),
            r("ANY", "/items/{id}", 3),
            r("POST", "/items", 4),
            r("GET", "/", 5),
        ]);
        assert_eq!(found(&router, "GET", "/items/special").0, 2);
        assert_eq!(
            found(&router, "GET", "/items/42"),
            (1, vec![("id".into(), "42".into())])
        );
        assert_eq!(found(&router, "DELETE", "/items/42").0, 3);
        assert_eq!(found(&router, "POST", "/items").0, 4);
        assert_eq!(
            found(&router, "GET", "/a/b/c"),
            (0, vec![("proxy".into(), "a/b/c".into())])
        );
        assert_eq!(found(&router, "GET", "/").0, 5);
        assert_eq!(found(&router, "HEAD", "/").0, 5);
        // The greedy parameter needs at least one segment.
        assert!(matches!(router.find("POST", "/"), Match::MethodNotAllowed(m) if m == ["GET"]));
    }

    #[test]
    fn not_found_and_method_not_allowed() {
        let router = Router::new(vec![r("GET", "/a/{b}", 0), r("PUT", "/a/{b}", 1)]);
        assert!(matches!(router.find("GET", "/b"), Match::NotFound));
        assert!(matches!(router.find("GET", "/a/b/c"), Match::NotFound));
        match router.find("POST", "/a/x") {
            Match::MethodNotAllowed(m) => assert_eq!(m, ["GET", "PUT"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn default_route_and_decoding() {
        let router = Router::new(vec![
            Route::new("ANY", "$default", EventKind::HttpApi, 0, false).unwrap(),
            Route::new("GET", "/users/{name}", EventKind::HttpApi, 1, false).unwrap(),
        ]);
        assert_eq!(
            found(&router, "GET", "/users/a%20b"),
            (1, vec![("name".into(), "a b".into())])
        );
        assert_eq!(found(&router, "POST", "/users/x").0, 0);
        assert_eq!(found(&router, "GET", "/whatever").0, 0);
        assert_eq!(router.routes()[1].route_key(), "$default");
        assert_eq!(router.routes()[0].route_key(), "GET /users/{name}");
    }

    #[test]
    fn bad_routes() {
        assert!(Route::new("GET", "/{a+}/b", EventKind::Api, 0, true).is_err());
        assert!(Route::new("GET", "nope", EventKind::Api, 0, true).is_err());
        assert!(Route::new("G T", "/", EventKind::Api, 0, true).is_err());
        assert!(Route::new("GET", "/{}", EventKind::Api, 0, true).is_err());
    }
}
