//! Strict digit-by-digit number parsing for Content-Length and chunk sizes. TODO(helper-http)
