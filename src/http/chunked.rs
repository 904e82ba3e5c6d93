//! Streaming chunked decoder (stub; replaced by the http module work)
pub enum Chunk {
    Data(std::ops::Range<usize>),
    NeedMore,
    Done,
}
#[derive(Debug)]
pub struct ChunkError(pub &'static str);
#[derive(Default)]
pub struct ChunkedDecoder {}
impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {}
    }
    pub fn decode(&mut self, _buf: &[u8]) -> Result<(usize, Chunk), ChunkError> {
        todo!()
    }
}
