//! The encoding of every frame p2pfs sends: tarpc messages in bincode 1,
//! with the checks tarpc itself does not make before it trusts a field.
//!
//! [`Codec`] frames each message (4-byte big-endian length, then the
//! message in bincode's default options: variable-length integers,
//! little-endian, as tokio-serde's `Bincode` format), with one guard in
//! front of the decoder: an incoming request ([`tarpc::ClientMessage`]) must carry a
//! deadline of at most [`MAX_DEADLINE`] from now. tarpc turns the relative
//! deadline it receives into an `Instant` with `Instant::now() + d`, which
//! panics for a large enough `d`: one frame with a deadline of 2⁶³ seconds
//! would abort a daemon (every binary aborts on a panic, `common::panic`). Such a frame is now
//! refused as bad data, which closes that connection only, like any frame
//! that does not decode.
//!
//! Everything else is bounded by the frame: bincode reads lengths from a
//! frame of at most [`crate::config::MAX_FRAME_BYTES`] and refuses one that
//! runs past its end, and serde preallocates at most 1 MiB per sequence.
//! The fuzz targets (`testkit::fuzz`) decode frames with
//! [`decode`], the same function the transport uses.

use bincode::Options as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io;
use std::marker::PhantomData;
use std::time::Duration;
use tokio_util::bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Longest deadline a request may carry, from its arrival: a year. Far above
/// any deadline p2pfs sets (60 s), far below what overflows an `Instant`.
pub const MAX_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);

/// A message type that arrives on a p2pfs connection: checked by
/// [`Inbound::check`] before it is decoded.
pub trait Inbound: DeserializeOwned {
    /// Checks the encoded message `frame` for values that decoding would
    /// trust blindly.
    ///
    /// Errors: `InvalidData` naming what is wrong.
    fn check(frame: &[u8]) -> io::Result<()>;
}

/// The encoded start of a [`tarpc::ClientMessage`], as far as the deadline:
/// the variant (0 = `Request`, 1 = `Cancel`), then for a request its
/// context, whose first field is the deadline relative to the sender's
/// clock.
#[derive(Deserialize)]
enum ClientMessageHead {
    Request(RequestHead),
    // The rest of a cancel is not read.
    Cancel(()),
}

#[derive(Deserialize)]
struct RequestHead {
    deadline: Duration,
}

impl<T: DeserializeOwned> Inbound for tarpc::ClientMessage<T> {
    fn check(frame: &[u8]) -> io::Result<()> {
        // A frame whose head does not decode fails the full decode below
        // with bincode's own error.
        // Only the head is read: the rest of the frame is left over.
        let head = options().allow_trailing_bytes().deserialize(frame);
        if let Ok(ClientMessageHead::Request(RequestHead { deadline })) = head {
            if deadline > MAX_DEADLINE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "request deadline {} s away (at most {} s)",
                        deadline.as_secs(),
                        MAX_DEADLINE.as_secs()
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl<T: DeserializeOwned> Inbound for tarpc::Response<T> {
    /// Responses carry no value that decoding trusts blindly.
    fn check(_frame: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// bincode's default options, as tokio-serde's `Bincode` format uses them
/// (variable-length integers, little-endian, no trailing bytes).
fn options() -> impl bincode::Options {
    bincode::DefaultOptions::new()
}

/// Decodes one frame's bytes as an incoming message, as every p2pfs
/// connection does: [`Inbound::check`], then bincode.
///
/// Errors: `InvalidData` for bytes that fail the check or do not decode.
pub fn decode<In: Inbound>(frame: &[u8]) -> io::Result<In> {
    In::check(frame)?;
    options().deserialize(frame).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Encodes one outgoing message as a frame's bytes.
///
/// Errors: `InvalidData` if it cannot be encoded.
pub fn encode<Out: Serialize>(item: &Out) -> io::Result<Vec<u8>> {
    options().serialize(item).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Marks the message types of a [`Codec`] without owning any (so the codec
/// is `Send` and `Sync` whatever they are).
type Types<In, Out> = PhantomData<(fn() -> In, fn(Out))>;

/// The frame codec of p2pfs connections: 4-byte big-endian length-delimited
/// frames of at most `max_frame` bytes (what `tokio_util`'s
/// `LengthDelimitedCodec` reads and writes with its defaults), each holding
/// one message: incoming ones through [`decode`], outgoing ones encoded
/// straight into the connection's write buffer.
///
/// Encoding in place is the point: tarpc's `serde_transport` encoded each
/// message into a `Vec` and then copied it behind its length prefix, so a
/// 1 MiB chunk was copied twice before TLS; `perf` of a 1 GiB write put
/// the second copy at 4.7 % of the client's CPU time.
pub struct Codec<In, Out> {
    frames: LengthDelimitedCodec,
    max_frame: usize,
    types: Types<In, Out>,
}

impl<In, Out> Codec<In, Out> {
    /// A codec refusing frames over `max_frame` bytes in either direction.
    pub fn new(max_frame: usize) -> Self {
        Codec {
            frames: LengthDelimitedCodec::builder().max_frame_length(max_frame).new_codec(),
            max_frame,
            types: PhantomData,
        }
    }
}

impl<In: Inbound, Out> Decoder for Codec<In, Out> {
    type Item = In;
    type Error = io::Error;

    /// Byte strings of the message that can share the frame (chunk bytes,
    /// [`crate::rpc::peer::Bytes`]) are slices of it, not copies.
    ///
    /// Errors: `InvalidData` for a frame over the limit or one that does
    /// not decode (the connection then ends).
    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<In>> {
        match self.frames.decode(src)? {
            Some(frame) => {
                let frame = frame.freeze();
                let previous = FRAME.with(|f| f.replace(Some(frame.clone())));
                let r = decode(&frame);
                FRAME.with(|f| f.replace(previous));
                r.map(Some)
            }
            None => Ok(None),
        }
    }
}

thread_local! {
    /// The frame [`Codec`] is decoding on this thread, if any.
    static FRAME: std::cell::RefCell<Option<Bytes>> = const { std::cell::RefCell::new(None) };
}

/// `bytes` as a shared slice of the frame being decoded on this thread, if
/// it lies inside one; `None` otherwise (the caller copies). Lets a
/// `Deserialize` implementation keep a 1 MiB chunk without copying it out
/// of its frame.
pub(crate) fn shared_from_frame(bytes: &[u8]) -> Option<Bytes> {
    FRAME.with(|f| {
        let f = f.borrow();
        let frame = f.as_ref()?;
        let (start, end) = (frame.as_ptr() as usize, frame.as_ptr() as usize + frame.len());
        let (at, len) = (bytes.as_ptr() as usize, bytes.len());
        (at >= start && at + len <= end && len > 0).then(|| frame.slice_ref(bytes))
    })
}

impl<In, Out: Serialize> Encoder<Out> for Codec<In, Out> {
    type Error = io::Error;

    /// Errors: `InvalidInput` for a message whose encoding exceeds the
    /// frame limit (nothing is written), `InvalidData` if it cannot be
    /// encoded.
    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> io::Result<()> {
        let invalid = |e| io::Error::new(io::ErrorKind::InvalidData, e);
        let len = options().serialized_size(&item).map_err(invalid)?;
        if len > self.max_frame as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("message of {len} bytes exceeds the {}-byte frame limit", self.max_frame),
            ));
        }
        dst.reserve(4 + len as usize);
        dst.put_u32(len as u32);
        let start = dst.len();
        options().serialize_into((&mut *dst).writer(), &item).map_err(invalid)?;
        debug_assert_eq!(dst.len() - start, len as usize);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::dir::DirServiceRequest;
    use crate::InodeId;

    type Incoming = tarpc::ClientMessage<DirServiceRequest>;

    fn request(deadline: Duration) -> Vec<u8> {
        let mut ctx = tarpc::context::current();
        ctx.deadline = std::time::Instant::now() + deadline;
        let msg: Incoming = tarpc::ClientMessage::Request(tarpc::Request {
            context: ctx,
            id: 7,
            message: DirServiceRequest::Getattr { ino: InodeId(1) },
        });
        encode(&msg).unwrap()
    }

    /// Regression: tarpc computes `Instant::now() + deadline` from the
    /// request; a deadline near 2⁶⁴ seconds panicked there, inside the
    /// connection task, which aborts a release build of dirsvc or peerd.
    #[test]
    fn a_request_with_an_absurd_deadline_is_refused_not_a_panic() {
        let frame = request(Duration::from_secs(30));
        assert!(decode::<Incoming>(&frame).is_ok());
        // Rewrite the deadline's seconds (the varint after the variant
        // byte) to u64::MAX: marker 253, then 8 bytes.
        let mut bad = vec![frame[0], 253];
        bad.extend_from_slice(&u64::MAX.to_le_bytes());
        let secs_len = match frame[1] {
            0..=250 => 1,
            251 => 3,
            252 => 5,
            253 => 9,
            _ => 17,
        };
        bad.extend_from_slice(&frame[1 + secs_len..]);
        let plain = std::panic::catch_unwind(|| options().deserialize::<Incoming>(&bad).map(drop));
        assert!(plain.is_err(), "plain bincode + tarpc panics on this frame");
        let e = decode::<Incoming>(&bad).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("deadline"), "{e}");
    }

    #[test]
    fn garbage_is_an_error() {
        for bytes in [&[][..], &[0], &[1, 2, 3], &[0xff; 40]] {
            assert!(decode::<Incoming>(bytes).is_err());
            assert!(decode::<tarpc::Response<crate::rpc::dir::DirServiceResponse>>(bytes).is_err());
        }
    }

    type PeerIncoming = tarpc::ClientMessage<crate::rpc::peer::PeerServiceRequest>;

    fn put(bytes: Vec<u8>) -> PeerIncoming {
        tarpc::ClientMessage::Request(tarpc::Request {
            context: tarpc::context::current(),
            id: 9,
            message: crate::rpc::peer::PeerServiceRequest::Put {
                id: crate::ChunkId([3; 32]),
                bytes: crate::rpc::peer::Bytes::from(bytes),
            },
        })
    }

    /// The frames are what tarpc's serde transport wrote before: a 4-byte
    /// big-endian length, then the bincode message. Peers and clients of
    /// either build talk to each other.
    #[test]
    fn frames_are_length_delimited_bincode() {
        let mut codec = Codec::<PeerIncoming, PeerIncoming>::new(1 << 20);
        let mut out = BytesMut::new();
        codec.encode(put(vec![7; 3000]), &mut out).unwrap();
        let len = out.len() - 4;
        assert_eq!(&out[..4], &(len as u32).to_be_bytes());
        // The body is one bincode message (the relative deadline differs
        // from one encoding to the next, so it is decoded, not compared).
        let body = LengthDelimitedCodec::new().decode(&mut out).unwrap().unwrap();
        assert_eq!(body.len(), len);
        let tarpc::ClientMessage::Request(req) = decode::<PeerIncoming>(&body).unwrap() else {
            panic!("not a request")
        };
        let crate::rpc::peer::PeerServiceRequest::Put { bytes, .. } = req.message else {
            panic!("not a put")
        };
        assert!(bytes[..] == [7; 3000][..], "the chunk changed");
    }

    /// A chunk decoded from a frame is a slice of that frame, not a copy
    /// (the point of the codec); the message is intact.
    #[test]
    fn chunk_bytes_decoded_from_a_frame_share_it() {
        let chunk: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut codec = Codec::<PeerIncoming, PeerIncoming>::new(1 << 20);
        let mut buf = BytesMut::new();
        codec.encode(put(chunk.clone()), &mut buf).unwrap();
        // Split across two reads: nothing decodes until the frame is whole.
        let mut first = buf.split_to(1000);
        assert!(codec.decode(&mut first).unwrap().is_none());
        first.unsplit(buf);
        let (start, end) = (first.as_ptr() as usize, first.as_ptr() as usize + first.len());
        let Some(tarpc::ClientMessage::Request(req)) = codec.decode(&mut first).unwrap() else {
            panic!("not a request")
        };
        let crate::rpc::peer::PeerServiceRequest::Put { bytes, .. } = req.message else {
            panic!("not a put")
        };
        assert!(bytes[..] == chunk[..], "the chunk changed");
        let at = bytes.as_ptr() as usize;
        assert!(
            at >= start && at + bytes.len() <= end,
            "the chunk was copied out of its frame: {start:x}..{end:x} {at:x}"
        );
        // Outside a frame, the same type decodes by copying.
        let copied: PeerIncoming = decode(&encode(&put(chunk.clone())).unwrap()).unwrap();
        let tarpc::ClientMessage::Request(req) = copied else { panic!("not a request") };
        let crate::rpc::peer::PeerServiceRequest::Put { bytes, .. } = req.message else {
            panic!("not a put")
        };
        assert!(bytes.into_vec() == chunk, "the chunk changed");
    }

    /// A message over the frame limit is refused before anything is
    /// written; one over the limit arriving ends the connection.
    #[test]
    fn frames_over_the_limit_are_refused_both_ways() {
        let mut codec = Codec::<PeerIncoming, PeerIncoming>::new(1000);
        let mut out = BytesMut::new();
        let e = codec.encode(put(vec![1; 2000]), &mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(out.is_empty());
        let mut big = BytesMut::new();
        Codec::<PeerIncoming, PeerIncoming>::new(1 << 20).encode(put(vec![1; 2000]), &mut big).unwrap();
        assert!(codec.decode(&mut big).is_err());
    }
}
