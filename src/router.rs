//! Route matching. TODO(helper-router): build an index from `&[RouteDef]` whose lookup cost does not grow
//! linearly with the number of routes.

pub mod normalize;

use crate::config::model::RouteDef;

/// What the router needs from a request besides host, method, path and query.
pub trait RequestView {
    /// The first value of the header `name_lower` (ASCII lower-case), if present.
    fn header(&self, name_lower: &[u8]) -> Option<&[u8]>;
}

/// A successful match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// Index into `Config::routes`.
    pub route: usize,
    /// How many leading bytes of the normalized path `strip_path` removes (0 when the route does not strip).
    pub strip_len: usize,
}

pub struct Router {}

impl Router {
    pub fn new(_routes: &[RouteDef]) -> Router {
        todo!()
    }

    /// `host`: the Host header without port (any case); `path`: normalized; `query`: raw, without '?'.
    pub fn find<R: RequestView>(
        &self,
        _host: &[u8],
        _method: &[u8],
        _path: &[u8],
        _query: &[u8],
        _req: &R,
    ) -> Option<Match> {
        todo!()
    }
}
