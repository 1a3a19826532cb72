//! `token`: a new bearer token for an identity, and the entry that lists it
//! in an access policy.

use clap::Args;
use quorumlock_server::auth::policy::token_digest_hex;

/// Bytes drawn from the OS's random source for one token.
pub const TOKEN_RANDOM_BYTES: usize = 32;

/// Flags of `token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The identity the token stands for (give it roles in the policy's
    /// [identities]).
    #[arg(long)]
    identity: String,
}

/// A new token: a prefix that secret scanners can spot and 256 random bits
/// in hex.
fn new_token() -> anyhow::Result<String> {
    use rand::RngCore;
    let mut bytes = [0u8; TOKEN_RANDOM_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|error| anyhow::anyhow!("the OS random source failed: {error}"))?;
    Ok(format!("qlt_{}", quorumlock_proto::hex::encode(&bytes)))
}

/// Prints the token alone on stdout (so `TOKEN=$(quorumlock token ...)`
/// captures it) and on stderr the policy entry that lists its SHA-256; the
/// token itself is shown nowhere else and stored nowhere.
pub fn token(args: TokenArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(
        !args.identity.is_empty()
            && !args.identity.contains('"')
            && !args.identity.chars().any(char::is_control),
        "--identity must be a non-empty name without quotes or control characters"
    );
    let token = new_token()?;
    println!("{token}");
    eprintln!(
        "add to the access policy (it holds the token's SHA-256, never the token):\n\n\
         [[tokens]]\nidentity = \"{}\"\nsha256 = \"{}\"\n",
        args.identity,
        token_digest_hex(&token)
    );
    Ok(0)
}
