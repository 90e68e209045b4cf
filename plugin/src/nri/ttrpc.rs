//! The ttrpc messages NRI speaks on each multiplexed connection: a 10-byte
//! header (payload length and stream id, big-endian u32; message type;
//! flags) and a protobuf `Request` or `Response`. Source of the format:
//! containerd/ttrpc (`channel.go`, `request.proto`).
//!
//! MOSE frames these itself: no Rust NRI library exists, and the `ttrpc`
//! crate serves only listening sockets and would need NRI's whole API
//! generated, for the three calls MOSE answers.

/// ttrpc message type of a request.
pub const REQUEST: u8 = 1;
/// ttrpc message type of a response.
pub const RESPONSE: u8 = 2;
const HEADER: usize = 10;

/// gRPC status codes MOSE answers with (`google.rpc.Code`).
pub const INVALID_ARGUMENT: i32 = 3;
pub const UNIMPLEMENTED: i32 = 12;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(string, tag = "1")]
    pub service: String,
    #[prost(string, tag = "2")]
    pub method: String,
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
    #[prost(int64, tag = "4")]
    pub timeout_nano: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

/// One ttrpc message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub stream: u32,
    pub kind: u8,
    pub body: Vec<u8>,
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER + self.body.len());
        b.extend_from_slice(&(self.body.len() as u32).to_be_bytes());
        b.extend_from_slice(&self.stream.to_be_bytes());
        b.push(self.kind);
        b.push(0);
        b.extend_from_slice(&self.body);
        b
    }
}

/// The byte stream of one logical connection, cut into ttrpc messages (a
/// message may span frames, and a frame hold several).
#[derive(Default)]
pub struct Stream {
    buf: Vec<u8>,
}

impl Stream {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, if any.
    pub fn next_message(&mut self) -> Option<Message> {
        if self.buf.len() < HEADER {
            return None;
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if self.buf.len() < HEADER + len {
            return None;
        }
        let stream = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        let kind = self.buf[8];
        let body = self.buf[HEADER..HEADER + len].to_vec();
        self.buf.drain(..HEADER + len);
        Some(Message { stream, kind, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_across_and_packed_in_frames_are_cut_right() {
        let a = Message {
            stream: 1,
            kind: REQUEST,
            body: b"abc".to_vec(),
        };
        let b = Message {
            stream: 3,
            kind: RESPONSE,
            body: Vec::new(),
        };
        let bytes = [a.encode(), b.encode()].concat();
        let mut s = Stream::default();
        s.push(&bytes[..5]);
        assert_eq!(s.next_message(), None);
        s.push(&bytes[5..]);
        assert_eq!(s.next_message(), Some(a));
        assert_eq!(s.next_message(), Some(b));
        assert_eq!(s.next_message(), None);
    }
}
