//! The encoding of every frame p2pfs sends: tarpc messages in bincode 1,
//! with the checks tarpc itself does not make before it trusts a field.
//!
//! [`Codec`] is tokio-serde's `Bincode` format (bincode's default options:
//! variable-length integers, little-endian) with one guard in front of the
//! decoder: an incoming request ([`tarpc::ClientMessage`]) must carry a
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
use std::pin::Pin;
use std::time::Duration;
use tarpc::tokio_serde::{Deserializer, Serializer};
use tokio_util::bytes::{Bytes, BytesMut};

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

/// The tokio-serde format of p2pfs connections: [`decode`] and [`encode`].
pub struct Codec<In, Out>(Types<In, Out>);

impl<In, Out> Default for Codec<In, Out> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<In: Inbound, Out> Deserializer<In> for Codec<In, Out> {
    type Error = io::Error;

    fn deserialize(self: Pin<&mut Self>, src: &BytesMut) -> Result<In, io::Error> {
        decode(src)
    }
}

impl<In, Out: Serialize> Serializer<Out> for Codec<In, Out> {
    type Error = io::Error;

    fn serialize(self: Pin<&mut Self>, item: &Out) -> Result<Bytes, io::Error> {
        encode(item).map(Bytes::from)
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
}
