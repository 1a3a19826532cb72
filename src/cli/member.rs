//! `member list`, `member add`, `member promote` and `member remove`:
//! changing a running cluster's membership, one step at a time.

use clap::{Args, Subcommand};
use quorumlock_proto::v1 as pb;

use super::ClusterArgs;

/// Flags of `member`.
#[derive(Args)]
pub struct MemberArgs {
    #[command(subcommand)]
    command: MemberCommand,
}

#[derive(Subcommand)]
enum MemberCommand {
    /// Prints every member: id, address, voter or learner, how far the
    /// leader knows it has caught up (raft: log index; paxos: chosen slot),
    /// and its lag behind the leader.
    List(ListArgs),
    /// Adds a node as a learner: it receives what is committed but does not
    /// vote. Start it first with `serve --join`.
    Add(AddArgs),
    /// Makes a learner a voter; refused while it lags more than 1,000
    /// entries (raft) or slots (paxos).
    Promote(IdArgs),
    /// Removes a voter or a learner; its id is never reused.
    Remove(IdArgs),
}

/// Flags of `member list`.
#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Flags of `member add`.
#[derive(Args)]
pub struct AddArgs {
    /// The new node's id: one the cluster has never had.
    #[arg(long)]
    id: u64,
    /// HOST:PORT of the new node's gRPC server, as members dial it.
    #[arg(long)]
    addr: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Flags of `member promote` and `member remove`.
#[derive(Args)]
pub struct IdArgs {
    /// The member's id.
    #[arg(long)]
    id: u64,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Runs `member`.
pub async fn member(args: MemberArgs) -> anyhow::Result<i32> {
    match args.command {
        MemberCommand::List(args) => {
            let client = args.cluster.connect().await?;
            let listed = client.list_members().await?;
            print_members(&listed.members, listed.from_leader);
            if listed.joint {
                println!("(a change is between its steps: old and new voters must both agree until the leader completes it)");
            }
        }
        MemberCommand::Add(args) => {
            let client = args.cluster.connect().await?;
            let changed = client.add_member(args.id, &args.addr).await?;
            println!("added node {} at {} as a learner", args.id, args.addr);
            print_members(&changed.members, true);
        }
        MemberCommand::Promote(args) => {
            let client = args.cluster.connect().await?;
            let changed = client.promote_member(args.id).await?;
            println!("promoted node {} to voter", args.id);
            print_members(&changed.members, true);
        }
        MemberCommand::Remove(args) => {
            let client = args.cluster.connect().await?;
            let changed = client.remove_member(args.id).await?;
            println!("removed node {}", args.id);
            print_members(&changed.members, true);
        }
    }
    Ok(0)
}

fn print_members(members: &[pb::MemberStatus], from_leader: bool) {
    println!(
        "{:<6} {:<24} {:<8} {:>12} {:>8}",
        "id", "address", "role", "matched", "lag"
    );
    for member in members {
        let role = if member.voter { "voter" } else { "learner" };
        let (matched, lag) = match (from_leader, member.matched_index) {
            (true, matched) if matched > 0 => (matched.to_string(), member.lag.to_string()),
            _ => ("-".to_string(), "-".to_string()),
        };
        println!(
            "{:<6} {:<24} {:<8} {:>12} {:>8}",
            member.id, member.addr, role, matched, lag
        );
    }
    if !from_leader {
        println!("(no leader is known: lag is unknown)");
    }
}
