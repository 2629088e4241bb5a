//! Load tests drive the release binaries; the results-morning load test arrives with the
//! results plane (issue 4). Until then this binary only says so.

fn main() {
    eprintln!(
        "no load tests yet: the results plane they exercise is not built (see loadtests/README.md)"
    );
    std::process::exit(2);
}
