//! NTLMv2 over HTTP (MS-NLMP): negotiate → challenge → authenticate, all three on one
//! kept-alive connection. Only what a proxy client needs: no signing, sealing or MIC.
//!
//! The challenge comes from the network, so every field is bounds-checked: a malformed
//! header is an error, never a panic or an out-of-bounds read. The target-name field is not
//! read at all, and a target-info field pointing outside the message counts as absent: squid's
//! ntlm_fake_auth echoes the client's TARGET_INFO flag but sends a 49-byte challenge whose
//! bytes 40-48 are text, not a buffer descriptor.

use anyhow::ensure;
use hmac::{Hmac, KeyInit, Mac};
use md4::{Digest as _, Md4};
use md5::Md5;
use zeroize::Zeroizing;

use crate::credentials::Credentials;

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
const NEGOTIATE_OEM: u32 = 0x0000_0002;
const REQUEST_TARGET: u32 = 0x0000_0004;
const NEGOTIATE_NTLM: u32 = 0x0000_0200;
const NEGOTIATE_ALWAYS_SIGN: u32 = 0x0000_8000;
const NEGOTIATE_EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
const NEGOTIATE_128: u32 = 0x2000_0000;
const NEGOTIATE_56: u32 = 0x8000_0000;

/// What gimlet asks for and accepts.
const CLIENT_FLAGS: u32 = NEGOTIATE_UNICODE
    | NEGOTIATE_OEM
    | REQUEST_TARGET
    | NEGOTIATE_NTLM
    | NEGOTIATE_ALWAYS_SIGN
    | NEGOTIATE_EXTENDED_SESSIONSECURITY
    | NEGOTIATE_TARGET_INFO
    | NEGOTIATE_128
    | NEGOTIATE_56;

/// MsvAvTimestamp: when the server sends one, the client uses it (MS-NLMP §3.1.5.1.2).
const AV_TIMESTAMP: u16 = 7;
const AV_EOL: u16 = 0;

/// The NEGOTIATE_MESSAGE (§2.2.1.1): no domain or workstation supplied.
pub fn negotiate_message() -> Vec<u8> {
    let mut m = Vec::with_capacity(32);
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&CLIENT_FLAGS.to_le_bytes());
    m.extend_from_slice(&[0; 16]);
    m
}

/// The parts of a CHALLENGE_MESSAGE (§2.2.1.2) that an NTLMv2 client uses.
#[derive(Debug, PartialEq, Eq)]
pub struct Challenge {
    pub flags: u32,
    pub server_challenge: [u8; 8],
    pub target_info: Vec<u8>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl Challenge {
    pub fn parse(m: &[u8]) -> anyhow::Result<Challenge> {
        ensure!(m.len() >= 32, "message too short ({} bytes)", m.len());
        ensure!(&m[..8] == SIGNATURE, "not an NTLMSSP message");
        ensure!(u32_at(m, 8) == Some(2), "not a challenge message");
        let flags = u32_at(m, 20).unwrap_or_default();
        let mut server_challenge = [0u8; 8];
        server_challenge.copy_from_slice(&m[24..32]);
        let target_info = if flags & NEGOTIATE_TARGET_INFO != 0 && m.len() >= 48 {
            let len = u16_at(m, 40).unwrap_or_default() as usize;
            let offset = u32_at(m, 44).unwrap_or_default() as usize;
            offset
                .checked_add(len)
                .and_then(|end| m.get(offset..end))
                .map(<[u8]>::to_vec)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(Challenge {
            flags,
            server_challenge,
            target_info,
        })
    }

    /// The server's timestamp AV pair, if any; walking the list stops at the first malformed pair.
    fn server_timestamp(&self) -> Option<u64> {
        let info = &self.target_info;
        let mut at = 0;
        while let (Some(id), Some(len)) = (u16_at(info, at), u16_at(info, at + 2)) {
            let value = info.get(at + 4..at + 4 + len as usize)?;
            match id {
                AV_EOL => return None,
                AV_TIMESTAMP if len == 8 => {
                    return Some(u64::from_le_bytes(value.try_into().ok()?));
                }
                _ => at += 4 + len as usize,
            }
        }
        None
    }
}

fn utf16le(s: &str) -> Vec<u8> {
    // Sized up front (at most two UTF-16 bytes per UTF-8 byte): a growing vector would leave
    // copies of the password behind in freed memory.
    let mut out = Vec::with_capacity(2 * s.len());
    out.extend(s.encode_utf16().flat_map(u16::to_le_bytes));
    out
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut mac = <Hmac<Md5> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// NTOWFv2 (§3.3.2): HMAC_MD5(MD4(UNICODE(password)), UNICODE(UPPER(user) + domain)).
pub fn ntowf_v2(user: &str, domain: &str, password: &str) -> Zeroizing<[u8; 16]> {
    let password = Zeroizing::new(utf16le(password));
    let nt_hash = Zeroizing::new(<[u8; 16]>::from(Md4::digest(&*password)));
    let identity = utf16le(&(user.to_uppercase() + domain));
    Zeroizing::new(hmac_md5(&*nt_hash, &[&identity]))
}

/// The NTLMv2 and LMv2 responses (§3.3.2) for a challenge.
pub fn responses(
    key: &[u8; 16],
    challenge: &Challenge,
    client_challenge: [u8; 8],
    timestamp: u64,
) -> (Vec<u8>, Vec<u8>) {
    let mut temp = vec![1, 1, 0, 0, 0, 0, 0, 0];
    temp.extend_from_slice(&timestamp.to_le_bytes());
    temp.extend_from_slice(&client_challenge);
    temp.extend_from_slice(&[0; 4]);
    temp.extend_from_slice(&challenge.target_info);
    temp.extend_from_slice(&[0; 4]);
    let proof = hmac_md5(key, &[&challenge.server_challenge, &temp]);
    let mut nt = proof.to_vec();
    nt.extend_from_slice(&temp);
    let lm = if challenge.server_timestamp().is_some() {
        // §3.1.5.1.2: with a server timestamp the LMv2 response is all zeros.
        vec![0; 24]
    } else {
        let mut lm = hmac_md5(key, &[&challenge.server_challenge, &client_challenge]).to_vec();
        lm.extend_from_slice(&client_challenge);
        lm
    };
    (nt, lm)
}

/// Splits `DOMAIN\user` (down-level logon name); a plain name has no domain.
fn split_domain(user: &str) -> (&str, &str) {
    match user.split_once('\\') {
        Some((domain, user)) => (domain, user),
        None => ("", user),
    }
}

/// The AUTHENTICATE_MESSAGE (§2.2.1.3), with the 64-byte header (no version, no MIC).
pub fn authenticate_message(
    challenge: &Challenge,
    creds: &Credentials,
    client_challenge: [u8; 8],
    now: u64,
) -> Vec<u8> {
    let (domain, user) = split_domain(&creds.user);
    let key = ntowf_v2(user, domain, creds.password.expose());
    let timestamp = challenge.server_timestamp().unwrap_or(now);
    let (nt, lm) = responses(&key, challenge, client_challenge, timestamp);
    let unicode = challenge.flags & NEGOTIATE_UNICODE != 0;
    let text = |s: &str| {
        if unicode {
            utf16le(s)
        } else {
            s.as_bytes().to_vec()
        }
    };
    let flags = (challenge.flags & CLIENT_FLAGS & !(NEGOTIATE_OEM | NEGOTIATE_UNICODE))
        | if unicode {
            NEGOTIATE_UNICODE
        } else {
            NEGOTIATE_OEM
        };
    let fields: [Vec<u8>; 6] = [lm, nt, text(domain), text(user), Vec::new(), Vec::new()];

    let mut m = Vec::with_capacity(64 + fields.iter().map(Vec::len).sum::<usize>());
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&3u32.to_le_bytes());
    let mut offset = 64u32;
    for field in &fields {
        let len = field.len() as u16;
        m.extend_from_slice(&len.to_le_bytes());
        m.extend_from_slice(&len.to_le_bytes());
        m.extend_from_slice(&offset.to_le_bytes());
        offset += field.len() as u32;
    }
    m.extend_from_slice(&flags.to_le_bytes());
    for field in &fields {
        m.extend_from_slice(field);
    }
    m
}

/// Now as a FILETIME: 100 ns ticks since 1601-01-01.
pub fn filetime_now() -> u64 {
    const UNIX_EPOCH_AS_FILETIME: u64 = 116_444_736_000_000_000;
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    UNIX_EPOCH_AS_FILETIME + (since_unix.as_nanos() / 100) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// MS-NLMP §4.2.4.3: the CHALLENGE_MESSAGE of the NTLMv2 example.
    const SPEC_CHALLENGE: &str = "4e544c4d53535000020000000c000c003800000033828ae20123456789abcdef\
        00000000000000002400240044000000060070170000000f53006500720076006500720002000c00\
        44006f006d00610069006e0001000c0053006500720076006500720000000000";

    #[test]
    fn ms_nlmp_4_2_4_vectors() {
        let key = ntowf_v2("User", "Domain", "Password");
        assert_eq!(
            key.to_vec(),
            unhex("0c868a403bfd7a93a3001ef22ef02e3f"),
            "NTOWFv2 (4.2.4.1.1)"
        );

        let challenge = Challenge::parse(&unhex(SPEC_CHALLENGE)).unwrap();
        assert_eq!(
            challenge.server_challenge,
            *b"\x01\x23\x45\x67\x89\xab\xcd\xef"
        );
        assert_eq!(challenge.target_info.len(), 0x24);

        let (nt, lm) = responses(&key, &challenge, [0xaa; 8], 0);
        assert_eq!(
            &nt[..16],
            unhex("68cd0ab851e51c96aabc927bebef6a1c"),
            "NTProofStr (4.2.4.2.2)"
        );
        assert_eq!(
            lm,
            unhex("86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa"),
            "LMv2 response (4.2.4.2.1)"
        );
        // temp (4.2.4.1.3) follows the proof.
        assert_eq!(
            &nt[16..44],
            unhex("01010000000000000000000000000000aaaaaaaaaaaaaaaa00000000")
        );
    }

    #[test]
    fn authenticate_message_layout() {
        let challenge = Challenge::parse(&unhex(SPEC_CHALLENGE)).unwrap();
        let creds = Credentials::parse_pair("Domain\\User:Password").unwrap();
        let m = authenticate_message(&challenge, &creds, [0xaa; 8], 0);
        assert_eq!(&m[..12], b"NTLMSSP\0\x03\0\0\0");
        let field = |i: usize| {
            let at = 12 + 8 * i;
            let len = u16_at(&m, at).unwrap() as usize;
            let off = u32_at(&m, at + 4).unwrap() as usize;
            m[off..off + len].to_vec()
        };
        assert_eq!(field(2), utf16le("Domain"));
        assert_eq!(field(3), utf16le("User"));
        assert_eq!(&field(1)[..16], unhex("68cd0ab851e51c96aabc927bebef6a1c"));
        assert_eq!(field(0).len(), 24);
        let flags = u32_at(&m, 60).unwrap();
        assert_eq!(flags & NEGOTIATE_UNICODE, NEGOTIATE_UNICODE);
        assert_eq!(flags & NEGOTIATE_OEM, 0);
    }

    #[test]
    fn server_timestamp_is_used_and_zeroes_lmv2() {
        let mut raw = unhex(SPEC_CHALLENGE);
        // Replace the EOL pair with a timestamp pair and a new EOL; fix the length.
        raw.truncate(raw.len() - 4);
        raw.extend_from_slice(&[7, 0, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0]);
        raw[40] += 12;
        raw[42] += 12;
        let challenge = Challenge::parse(&raw).unwrap();
        assert_eq!(
            challenge.server_timestamp(),
            Some(u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8]))
        );
        let creds = Credentials::parse_pair("u:p").unwrap();
        let (_, lm) = responses(&ntowf_v2("u", "", "p"), &challenge, [0xaa; 8], 99);
        assert_eq!(lm, vec![0; 24]);
        let m = authenticate_message(&challenge, &creds, [0xaa; 8], 99);
        // The server's timestamp, not "now", is in the blob.
        assert!(m.windows(8).any(|w| w == [1, 2, 3, 4, 5, 6, 7, 8]));
        assert!(!m.windows(8).any(|w| w == 99u64.to_le_bytes()));
    }

    #[test]
    fn malformed_challenges_are_errors_never_panics() {
        let good = unhex(SPEC_CHALLENGE);
        assert!(Challenge::parse(&good[..31]).is_err());
        assert!(Challenge::parse(b"NTLMSSP\0\x01\0\0\0").is_err());
        let mut wrong_sig = good.clone();
        wrong_sig[0] = b'X';
        assert!(Challenge::parse(&wrong_sig).is_err());
        // Target info pointing past the end (or overflowing) reads as absent.
        let mut bad_info = good.clone();
        bad_info[44] = 0xff;
        assert_eq!(Challenge::parse(&bad_info).unwrap().target_info, b"");
        let mut huge = good.clone();
        huge[44..48].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Challenge::parse(&huge).unwrap().target_info, b"");
        // A bogus target-name offset (squid's fake helper) is ignored.
        let mut bogus_name = good.clone();
        bogus_name[16..20].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert!(Challenge::parse(&bogus_name).is_ok());
        // Every truncation and every single-byte corruption parses or errs, never panics.
        for n in 0..good.len() {
            let _ = Challenge::parse(&good[..n]).map(|c| c.server_timestamp());
            for v in [0u8, 0x7f, 0xff] {
                let mut m = good.clone();
                m[n] = v;
                let _ = Challenge::parse(&m).map(|c| c.server_timestamp());
            }
        }
    }

    #[test]
    fn squids_fake_helper_challenge_is_accepted() {
        // Captured from squid 5.7's ntlm_fake_auth: TARGET_INFO flagged, no such field, a
        // garbage target-name offset, "WORKGROUP" where the target-info descriptor would be.
        let raw = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            "TlRMTVNTUAACAAAACQAJAK6qqqoHgoigYmYKPRbscE8AAAAAAAA6AFdPUktHUk9VUA==",
        )
        .unwrap();
        let challenge = Challenge::parse(&raw).unwrap();
        assert!(challenge.target_info.is_empty());
        let creds = Credentials::parse_pair("CORP\\alice:pw").unwrap();
        let m = authenticate_message(&challenge, &creds, [1; 8], 0);
        assert_eq!(&m[..12], b"NTLMSSP\0\x03\0\0\0");
    }

    #[test]
    fn negotiate_message_is_well_formed() {
        let m = negotiate_message();
        assert_eq!(m.len(), 32);
        assert_eq!(&m[..12], b"NTLMSSP\0\x01\0\0\0");
        assert_eq!(u32_at(&m, 12), Some(CLIENT_FLAGS));
        assert_eq!(split_domain("CORP\\alice"), ("CORP", "alice"));
        assert_eq!(split_domain("alice"), ("", "alice"));
    }
}
