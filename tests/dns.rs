//! DNS over real sockets: the server task on 127.0.0.1:0, clients on loopback sources.

mod common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

#[tokio::test]
async fn answers_space_and_refuses_public_over_udp_and_tcp() {
    let server = Server::start(&fixture_dir()).await;
    let m = udp(
        server.addr,
        SPACE,
        "internal-app.herokuapp.com.",
        RecordType::A,
    )
    .await;
    assert_eq!(data(&m), ["127.16.0.10"]);
    assert!(m.metadata.authoritative);
    let m = tcp(
        server.addr,
        HQ_VPN,
        "internal-app.herokuapp.com.",
        RecordType::A,
    )
    .await;
    assert_eq!(data(&m), ["127.16.0.10"]);
    let m = udp(
        server.addr,
        PUBLIC,
        "internal-app.herokuapp.com.",
        RecordType::A,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let m = tcp(
        server.addr,
        PUBLIC,
        "internal-app.herokuapp.com.",
        RecordType::A,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    server.stop().await;
}
