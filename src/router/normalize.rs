//! Path normalization for matching. (stub; replaced by the router work)
#[derive(Debug)]
pub struct NormalizeError;
pub fn normalize_path(raw: &[u8], out: &mut Vec<u8>) -> Result<(), NormalizeError> {
    out.clear();
    out.extend_from_slice(raw);
    Ok(())
}
pub fn upstream_path(service_path: &str, normalized: &[u8], strip_len: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(service_path.as_bytes());
    out.extend_from_slice(&normalized[strip_len..]);
}
