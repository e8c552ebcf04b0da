//! Block-wise transfers (RFC 7959) on top of the CoAP message layer: the Block1 and Block2
//! option values, in-order reassembly of a body sent in blocks, the server's side of a
//! Block1 upload (2.31 Continue, 4.08, 4.13 with Size1, size negotiation) and a
//! representation served block by block through Block2.
//!
//! Sans-io like [`crate::coap::Exchange`]: the application keeps one [`Uploads`] per peer and
//! one [`Representation`] per body it sends in blocks, and passes `now` in.

use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_lite::{CoapOption, MessageClass, Packet, ResponseType};

use crate::coap::Request;

/// Option numbers (RFC 7959 2.1, 4).
pub const BLOCK2: u16 = 23;
pub const BLOCK1: u16 = 27;
pub const SIZE2: u16 = 28;
pub const SIZE1: u16 = 60;

/// The largest regular block size exponent: 2^(6+4) = 1024 bytes. 7 is reserved (BERT
/// over reliable transports, RFC 8323).
pub const MAX_SZX: u8 = 6;

/// Why a Block1 or Block2 option value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("block option of {0} bytes (RFC 7959 2.2: at most 3)")]
    Length(usize),
    #[error("block size exponent 7 (RFC 7959 2.2: reserved, 4.00 Bad Request)")]
    ReservedSzx,
    #[error("block {num} of {size} bytes lies beyond a body of {len} bytes")]
    BeyondEnd { num: u32, size: usize, len: usize },
    #[error("a non-final block of {len} bytes where the size is {size} (RFC 7959 2.2)")]
    ShortBlock { len: usize, size: usize },
}

/// A Block1 or Block2 option value: block number, more flag, size exponent (RFC 7959 2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockOption {
    pub num: u32,
    pub more: bool,
    /// The block size is 2^(szx+4) bytes.
    pub szx: u8,
}

impl BlockOption {
    pub fn decode(raw: &[u8]) -> Result<BlockOption, BlockError> {
        if raw.len() > 3 {
            return Err(BlockError::Length(raw.len()));
        }
        let value = raw.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        let szx = (value & 0x07) as u8;
        if szx == 7 {
            return Err(BlockError::ReservedSzx);
        }
        Ok(BlockOption {
            num: value >> 4,
            more: value & 0x08 != 0,
            szx,
        })
    }

    /// The value in the fewest bytes (RFC 7252 3.2); 0 is the empty value.
    pub fn encode(&self) -> Vec<u8> {
        let value = (self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx & 0x07);
        let bytes = value.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        bytes.get(skip..).map(<[u8]>::to_vec).unwrap_or_default()
    }

    pub fn size(&self) -> usize {
        block_size(self.szx)
    }

    /// Where the block starts in the body.
    pub fn offset(&self) -> u64 {
        u64::from(self.num) * self.size() as u64
    }

    /// The option `number` of `packet`, if present.
    pub fn of(packet: &Packet, number: u16) -> Option<Result<BlockOption, BlockError>> {
        packet
            .get_first_option(CoapOption::from(number))
            .map(|raw| BlockOption::decode(raw))
    }
}

/// 2^(szx+4) bytes.
pub fn block_size(szx: u8) -> usize {
    16usize << szx.min(MAX_SZX)
}

/// The size exponent of a block size of 16, 32, ..., 1024 bytes.
pub fn szx_of(size: usize) -> Option<u8> {
    (0..=MAX_SZX).find(|szx| block_size(*szx) == size)
}

/// An unsigned option value in the fewest bytes (RFC 7252 3.2).
pub fn uint_option(value: u32) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes.get(skip..).map(<[u8]>::to_vec).unwrap_or_default()
}

fn read_uint(raw: &[u8]) -> u64 {
    raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// Limits of block-wise transfers, all configurable.
#[derive(Debug, Clone)]
pub struct BlockwiseParams {
    /// The largest block size exponent we use or accept; larger blocks are negotiated down.
    pub max_szx: u8,
    /// The largest body reassembled from Block1 blocks; beyond it 4.13 with Size1.
    pub max_body_size: usize,
    /// An upload with no block for this long is forgotten.
    pub lifetime: Duration,
    /// Uploads reassembled at once per peer; the least recently used is forgotten first.
    pub max_transfers: usize,
}

/// What one more block did to a body being reassembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The block was appended; more are expected.
    More,
    /// The block was a repetition of one already appended (a retransmission under a new
    /// message id); nothing changed.
    Repeated,
    /// The final block was appended: the body is whole.
    Complete,
}

/// Why a block cannot be appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssemblyError {
    #[error("block at byte {offset} where byte {expected} is next (RFC 7959 2.3: 4.08)")]
    OutOfOrder { offset: u64, expected: u64 },
    #[error("body of {len} bytes or more, above the limit of {max} (RFC 7959 2.9.3: 4.13)")]
    TooLarge { len: u64, max: usize },
    #[error(transparent)]
    Block(#[from] BlockError),
}

/// A body arriving in blocks, in order, up to a size limit. The server's Block1 uploads
/// use it, and so can a client reading a Block2 response.
#[derive(Debug, Clone)]
pub struct Assembly {
    body: Vec<u8>,
    max: usize,
}

impl Assembly {
    pub fn new(max: usize) -> Assembly {
        Assembly {
            body: Vec::new(),
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// Appends `payload`, the block `block` describes. A block may be larger than the size
    /// negotiated later (RFC 7959 2.5: the receiver keeps the whole block and the sender
    /// continues at the smaller size after it), but every block but the last is exactly
    /// its size.
    pub fn append(
        &mut self,
        block: BlockOption,
        payload: &[u8],
    ) -> Result<Progress, AssemblyError> {
        if block.more && payload.len() != block.size() {
            return Err(BlockError::ShortBlock {
                len: payload.len(),
                size: block.size(),
            }
            .into());
        }
        let offset = block.offset();
        let expected = self.body.len() as u64;
        let end = offset + payload.len() as u64;
        if offset < expected && end <= expected && block.more {
            return Ok(Progress::Repeated);
        }
        if offset != expected {
            return Err(AssemblyError::OutOfOrder { offset, expected });
        }
        if end > self.max as u64 {
            return Err(AssemblyError::TooLarge {
                len: end,
                max: self.max,
            });
        }
        self.body.extend_from_slice(payload);
        Ok(if block.more {
            Progress::More
        } else {
            Progress::Complete
        })
    }

    pub fn into_body(self) -> Vec<u8> {
        self.body
    }
}

/// What the server makes of a request, block-wise.
#[derive(Debug)]
pub enum Upload {
    /// No Block1 option: the request is whole.
    Whole(Request),
    /// The last block arrived: the request with the reassembled body (Block1 and Size1
    /// removed). The final response must carry `echo` as its Block1 option (RFC 7959 2.3).
    Complete { request: Request, echo: BlockOption },
    /// Answered here: 2.31 Continue for a block in the middle, 4.00 for a bad Block1 value,
    /// 4.08 for a block that does not continue an upload, 4.13 with Size1 for a body over
    /// the limit. Send `response` as the answer to `request`.
    Answer { request: Request, response: Packet },
}

#[derive(Debug)]
struct Transfer {
    /// The request's method and options but the block-wise ones: the blocks of one body
    /// share it (RFC 7959 2.5; the token may change from block to block).
    key: Vec<u8>,
    assembly: Assembly,
    touched: Instant,
}

/// The Block1 uploads of one peer, server side.
#[derive(Debug)]
pub struct Uploads {
    params: BlockwiseParams,
    transfers: Vec<Transfer>,
}

impl Uploads {
    pub fn new(params: BlockwiseParams) -> Uploads {
        Uploads {
            params,
            transfers: Vec::new(),
        }
    }

    pub fn params(&self) -> &BlockwiseParams {
        &self.params
    }

    /// Uploads under way.
    pub fn len(&self) -> usize {
        self.transfers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.transfers.is_empty()
    }

    /// When the oldest upload is forgotten.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.transfers
            .iter()
            .map(|transfer| transfer.touched + self.params.lifetime)
            .min()
    }

    pub fn forget_expired(&mut self, now: Instant) {
        let lifetime = self.params.lifetime;
        self.transfers
            .retain(|transfer| transfer.touched + lifetime > now);
    }

    pub fn receive(&mut self, request: Request, now: Instant) -> Upload {
        self.forget_expired(now);
        let max = self.params.max_body_size;
        if let Some(size1) = request.packet.get_first_option(CoapOption::Size1) {
            // The client announces the whole body (RFC 7959 4).
            if read_uint(size1) > max as u64 {
                return Upload::Answer {
                    request,
                    response: too_large(max),
                };
            }
        }
        let block = match BlockOption::of(&request.packet, BLOCK1) {
            None => return Upload::Whole(request),
            Some(Ok(block)) => block,
            Some(Err(error)) => {
                tracing::info!(%error, "Block1 refused");
                let response = answer(ResponseType::BadRequest, &error.to_string());
                return Upload::Answer { request, response };
            }
        };
        let key = request_key(&request.packet);
        let position = self.transfers.iter().position(|t| t.key == key);
        if block.num == 0 {
            // A first block starts the body afresh, whatever came before under this key.
            if let Some(at) = position {
                self.transfers.swap_remove(at);
            }
            if !block.more {
                // A body in one block: nothing to keep.
                let mut assembly = Assembly::new(max);
                return match assembly.append(block, &request.packet.payload) {
                    Ok(_) => complete(request, assembly, block, self.params.max_szx),
                    Err(error) => refuse(request, &error, max),
                };
            }
            while self.transfers.len() >= self.params.max_transfers.max(1) {
                let oldest = self
                    .transfers
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, t)| t.touched)
                    .map(|(at, _)| at);
                match oldest {
                    Some(at) => {
                        tracing::debug!("oldest Block1 upload forgotten for a new one");
                        self.transfers.swap_remove(at);
                    }
                    None => break,
                }
            }
            self.transfers.push(Transfer {
                key: key.clone(),
                assembly: Assembly::new(max),
                touched: now,
            });
        }
        let Some(at) = self.transfers.iter().position(|t| t.key == key) else {
            tracing::info!(num = block.num, "Block1 block of no upload under way");
            let response = answer(
                ResponseType::RequestEntityIncomplete,
                "no upload to continue",
            );
            return Upload::Answer { request, response };
        };
        let Some(transfer) = self.transfers.get_mut(at) else {
            let response = answer(ResponseType::InternalServerError, "");
            return Upload::Answer { request, response };
        };
        transfer.touched = now;
        match transfer.assembly.append(block, &request.packet.payload) {
            Ok(Progress::More | Progress::Repeated) => {
                let mut response = answer(ResponseType::Continue, "");
                // RFC 7959 2.3: the Continue echoes the block, with the size we want for the
                // next ones.
                let echo = BlockOption {
                    szx: block.szx.min(self.params.max_szx),
                    ..block
                };
                response.add_option(CoapOption::Block1, echo.encode());
                Upload::Answer { request, response }
            }
            Ok(Progress::Complete) => {
                let transfer = self.transfers.swap_remove(at);
                complete(request, transfer.assembly, block, self.params.max_szx)
            }
            Err(error) => {
                self.transfers.swap_remove(at);
                refuse(request, &error, max)
            }
        }
    }
}

fn complete(mut request: Request, assembly: Assembly, block: BlockOption, max_szx: u8) -> Upload {
    request.packet.payload = assembly.into_body();
    request.packet.clear_option(CoapOption::Block1);
    request.packet.clear_option(CoapOption::Size1);
    Upload::Complete {
        request,
        echo: BlockOption {
            szx: block.szx.min(max_szx),
            ..block
        },
    }
}

fn refuse(request: Request, error: &AssemblyError, max: usize) -> Upload {
    tracing::info!(%error, "Block1 upload refused");
    let response = match error {
        AssemblyError::OutOfOrder { .. } => {
            answer(ResponseType::RequestEntityIncomplete, &error.to_string())
        }
        AssemblyError::TooLarge { .. } => too_large(max),
        AssemblyError::Block(_) => answer(ResponseType::BadRequest, &error.to_string()),
    };
    Upload::Answer { request, response }
}

/// 4.13 telling the largest body we take (RFC 7959 4).
fn too_large(max: usize) -> Packet {
    let mut packet = answer(ResponseType::RequestEntityTooLarge, "");
    packet.add_option(
        CoapOption::Size1,
        uint_option(u32::try_from(max).unwrap_or(u32::MAX)),
    );
    packet
}

fn answer(code: ResponseType, reason: &str) -> Packet {
    let mut packet = Packet::new();
    packet.header.code = MessageClass::Response(code);
    packet.payload = reason.as_bytes().to_vec();
    packet
}

/// The request's identity for block-wise purposes: method and options, without the
/// block-wise options.
fn request_key(packet: &Packet) -> Vec<u8> {
    let mut key = vec![u8::from(packet.header.code)];
    for (&number, values) in packet.options() {
        if matches!(number, BLOCK1 | BLOCK2 | SIZE1 | SIZE2) {
            continue;
        }
        for value in values {
            key.extend_from_slice(&number.to_be_bytes());
            key.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_be_bytes());
            key.extend_from_slice(value);
        }
    }
    key
}

/// A body too large for one message, served block by block through Block2 (RFC 7959 2.4),
/// the same bytes for every block of it (its ETag names them).
#[derive(Debug, Clone)]
pub struct Representation {
    payload: Bytes,
    etag: Vec<u8>,
}

impl Representation {
    pub fn new(payload: Bytes, etag: Vec<u8>) -> Representation {
        Representation { payload, etag }
    }

    /// Whether a body of `len` bytes needs more than one block of 2^(max_szx+4) bytes.
    pub fn needs_blocks(len: usize, max_szx: u8) -> bool {
        len > block_size(max_szx)
    }

    pub fn len(&self) -> usize {
        self.payload.len()
    }

    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    /// Puts block `requested` into `packet`: its bytes, Block2, Size2 and ETag. A block
    /// size above `max_szx` is answered with the block of size `max_szx` at the same
    /// offset (RFC 7959 2.4). Returns the Block2 value sent.
    pub fn fill(
        &self,
        packet: &mut Packet,
        requested: BlockOption,
        max_szx: u8,
    ) -> Result<BlockOption, BlockError> {
        let szx = requested.szx.min(max_szx);
        let size = block_size(szx);
        let offset = requested.offset();
        let len = self.payload.len();
        let beyond = BlockError::BeyondEnd {
            num: requested.num,
            size: requested.size(),
            len,
        };
        let start = usize::try_from(offset).map_err(|_| beyond.clone())?;
        if start >= len && !(start == 0 && len == 0) {
            return Err(beyond);
        }
        let end = start.saturating_add(size).min(len);
        let block = BlockOption {
            num: u32::try_from(offset / size as u64).map_err(|_| beyond.clone())?,
            more: end < len,
            szx,
        };
        packet.payload = self.payload.get(start..end).ok_or(beyond)?.to_vec();
        packet.clear_option(CoapOption::Block2);
        packet.add_option(CoapOption::Block2, block.encode());
        packet.clear_option(CoapOption::Size2);
        packet.add_option(
            CoapOption::Size2,
            uint_option(u32::try_from(len).unwrap_or(u32::MAX)),
        );
        packet.clear_option(CoapOption::ETag);
        packet.add_option(CoapOption::ETag, self.etag.clone());
        Ok(block)
    }
}
