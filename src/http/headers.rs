//! Header classification: hop-by-hop names, Connection tokens. TODO(helper-http)
