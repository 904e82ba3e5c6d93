//! Streaming `Transfer-Encoding: chunked` decoder. TODO(helper-http)
