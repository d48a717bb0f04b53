//! The agent's in-process nftables backend (libnftables, one context for the agent's life)
//! against the kernel, in a namespace of its own: transactions apply whole or not at all,
//! errors are nft's own, and the context keeps serving after an error.

use hybrid_proxy_tests::{netns::Netns, privileged};
use proxy_agent::nft::{Command, Family, NftBackend as _, NftCli, NftError, TABLE, Transaction};

fn tx(commands: Vec<Command>) -> Transaction {
    let mut tx = Transaction::new();
    for c in commands {
        tx.push(c);
    }
    tx
}

fn chain(name: &str) -> Command {
    Command::AddChain {
        family: Family::Ip,
        name: name.to_owned(),
        base: None,
    }
}

#[test]
fn in_process_transactions_apply_whole_or_not_at_all() {
    if !privileged::root_or_skip("nft_in_process") {
        return;
    }
    let ns = Netns::new("nftlib");
    let chains = || {
        let out = ns.exec("nft", &["list", "chains", "ip"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (first, failed, after, checked) = ns.run(|| {
        let mut nft = NftCli::in_process();
        let first = nft.apply(&tx(vec![
            Command::AddTable { family: Family::Ip },
            chain("probe"),
        ]));
        // The second command fails in the kernel: the first must not stay.
        let failed = nft.apply(&tx(vec![
            chain("half"),
            Command::DeleteChain {
                family: Family::Ip,
                name: "absent".to_owned(),
            },
        ]));
        let after = nft.apply(&tx(vec![chain("after")]));
        let checked = nft.check(&tx(vec![chain("checked-only")]));
        (first, failed, after, checked)
    });
    first.unwrap();
    match failed {
        Err(NftError::Rejected { stderr, .. }) => {
            assert!(stderr.contains("No such file or directory"), "{stderr}");
            assert!(
                stderr.contains("delete chain ip hybrid-proxy absent"),
                "nft's message quotes the failing command: {stderr}"
            );
        }
        other => panic!("a delete of a missing chain must be rejected: {other:?}"),
    }
    after.expect("the context serves after an error");
    checked.expect("a dry run of a valid transaction");
    let listed = chains();
    assert!(listed.contains(&format!("table ip {TABLE}")), "{listed}");
    assert!(listed.contains("chain probe"), "{listed}");
    assert!(listed.contains("chain after"), "{listed}");
    assert!(
        !listed.contains("chain half"),
        "half a transaction applied: {listed}"
    );
    assert!(
        !listed.contains("checked-only"),
        "a dry run changed the ruleset: {listed}"
    );
}
