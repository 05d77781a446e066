//! The routes of Azure Functions HTTP triggers: the route templates of the active app
//! functions (`products/{id}`, `files/{*path}`, `{id:int}`, `{name?}`), and which one takes a
//! path under `/api/`. `azure_http` answers the requests; `auth` checks their keys.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use warren_wire::manifest::{AuthLevel, AzureFunction, AzureTrigger};

use crate::catalog::{Catalog, ACTIVE_TTL};
use crate::error::Error;

/// One segment of a route template.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    /// `{name}`, `{name:int}`, `{name?}`.
    Param {
        name: String,
        int: bool,
        optional: bool,
    },
    /// `{*name}`: the rest of the path.
    Rest(String),
}

/// An HTTP-triggered function of an app, by its route.
#[derive(Debug)]
struct Route {
    function: String,
    template: Vec<Segment>,
    azure: AzureFunction,
    auth: AuthLevel,
}

/// The route a request found.
#[derive(Debug)]
pub(crate) struct Found {
    pub function: String,
    pub auth: AuthLevel,
    pub params: Vec<(String, String)>,
    pub azure: AzureFunction,
}

/// The routes of the active app functions, read again when older than [`ACTIVE_TTL`].
#[derive(Default)]
pub(crate) struct Routes {
    table: Mutex<Option<(Instant, Arc<Vec<Route>>)>>,
}

impl Routes {
    async fn table(&self, catalog: &Catalog) -> Result<Arc<Vec<Route>>, Error> {
        if let Some((at, t)) = self.table.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if at.elapsed() < ACTIVE_TTL {
                return Ok(t.clone());
            }
        }
        let mut routes = Vec::new();
        for (name, _, manifest) in catalog.active_manifests().await? {
            let Some(az) = manifest.azure.as_ref().filter(|a| a.trigger_type == AzureTrigger::Http) else { continue };
            routes.push(Route {
                template: parse_template(az.route_or(&name)),
                function: name,
                azure: az.clone(),
                auth: manifest.auth,
            });
        }
        // As ASP.NET orders them: literal segments before parameters, a catch-all last.
        routes.sort_by_key(|r| {
            let literals = r.template.iter().filter(|s| matches!(s, Segment::Literal(_))).count();
            let rest = r.template.iter().any(|s| matches!(s, Segment::Rest(_)));
            (rest, std::cmp::Reverse(literals), r.function.clone())
        });
        let table = Arc::new(routes);
        *self.table.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), table.clone()));
        Ok(table)
    }

    /// The route taking this path and method; else the methods the path's routes take.
    pub(crate) async fn lookup(
        &self,
        catalog: &Catalog,
        method: &str,
        path: &str,
    ) -> Result<Result<Found, Vec<String>>, Error> {
        let Some(rest) = path.strip_prefix("/api/") else { return Ok(Err(Vec::new())) };
        let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        let mut allowed = Vec::new();
        for r in self.table(catalog).await?.iter() {
            let Some(params) = matches(&r.template, &segments) else { continue };
            if !r.azure.allows(method) {
                allowed.extend(r.azure.methods.iter().map(|m| m.to_ascii_uppercase()));
                continue;
            }
            return Ok(Ok(Found { function: r.function.clone(), auth: r.auth, params, azure: r.azure.clone() }));
        }
        Ok(Err(allowed))
    }
}

fn parse_template(template: &str) -> Vec<Segment> {
    template
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(inner) if inner.starts_with('*') => Segment::Rest(inner.trim_start_matches('*').to_string()),
            Some(inner) => {
                let optional = inner.ends_with('?');
                let inner = inner.trim_end_matches('?');
                let (name, constraint) = inner.split_once(':').unwrap_or((inner, ""));
                Segment::Param { name: name.to_string(), int: constraint.eq_ignore_ascii_case("int"), optional }
            }
            None => Segment::Literal(s.to_string()),
        })
        .collect()
}

/// The route parameters when the template takes these segments (decoded from the URL).
fn matches(template: &[Segment], path: &[&str]) -> Option<Vec<(String, String)>> {
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    let path: Vec<&str> = path.iter().copied().filter(|s| !s.is_empty()).collect();
    let mut params = Vec::new();
    let mut i = 0;
    for seg in template {
        match seg {
            Segment::Literal(l) => {
                if !path.get(i).is_some_and(|p| p.eq_ignore_ascii_case(l)) {
                    return None;
                }
                i += 1;
            }
            Segment::Param { name, int, optional } => match path.get(i) {
                Some(p) => {
                    let value = decode(p);
                    if *int && value.parse::<i64>().is_err() {
                        return None;
                    }
                    params.push((name.clone(), value));
                    i += 1;
                }
                None if *optional => {}
                None => return None,
            },
            Segment::Rest(name) => {
                params.push((
                    name.clone(),
                    path[i.min(path.len())..].iter().map(|p| decode(p)).collect::<Vec<_>>().join("/"),
                ));
                i = path.len();
            }
        }
    }
    (i == path.len()).then_some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        let segments: Vec<&str> = path.split('/').collect();
        matches(&parse_template(template), &segments)
    }

    #[test]
    fn templates_match_as_azure_routes_do() {
        let p = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(params("products/{id}", "Products/7"), Some(vec![p("id", "7")]));
        assert_eq!(params("products/{id:int}", "products/x"), None);
        assert_eq!(params("hello/{name?}", "hello"), Some(vec![]));
        assert_eq!(params("hello/{name?}", "hello/Ada%20L"), Some(vec![p("name", "Ada L")]));
        assert_eq!(params("echo/{*rest}", "echo/a/b"), Some(vec![p("rest", "a/b")]));
        assert_eq!(params("echo", "echo/a"), None);
        assert_eq!(params("products/{id:int}", "products/7=x"), None);
        assert_eq!(params("files/{name}", "files/a&b+c"), Some(vec![p("name", "a&b+c")]));
        assert_eq!(params("hello", "hello"), Some(vec![]));
    }
}
