// The HTTP server on loopback, with the RPC service behind it and the
// `sag-cloud call` client in front: signed calls in both schemes, keep-alive,
// and the bounds (body size, slow and broken clients).
#include "cloud/http_server.h"

#include <gtest/gtest.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/write.hpp>
#include <thread>

#include "common/net/tls.h"
#include "tests/support/temp_dir.h"
#include "tests/support/test_http_server.h"
#include "tests/unit/cloud/rpc_fixture.h"

namespace sag::cloud::rpc::test {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using std::chrono::milliseconds;

class LoopbackServer : public RpcFixture {
 protected:
  void SetUp() override {
    // The service's clock is the fixture's fixed time; the client signs
    // with it too.
    HttpServerOptions o;
    o.max_body_bytes = 4096;
    o.read_timeout = milliseconds(300);
    o.idle_timeout = milliseconds(300);
    o.refusal = [this](int status, const std::string&) {
      return service_.TransportError(status == 413 ? errors::RequestTooLarge(4096)
                                                   : errors::InternalError());
    };
    auto s = HttpServer::Start(io_, "127.0.0.1", 0, service_.Handler(), o);
    ASSERT_TRUE(s) << s.error().ToString();
    server_ = std::move(*s);
    thread_ = std::thread([this] { io_.run(); });
  }

  void TearDown() override {
    if (server_) asio::post(io_, [this] { server_->Stop(); });
    io_.stop();
    if (thread_.joinable()) thread_.join();
  }

  Endpoint Here() const { return {"127.0.0.1", server_->port(), false, {}}; }

  SignOptions Opts(SignatureScheme scheme, const char* method) const {
    auto o = Options(scheme, method);
    o.host = "127.0.0.1:" + std::to_string(server_->port());
    return o;
  }

  // A raw connection: send bytes, read what comes until the peer closes or
  // `until` has been seen.
  struct Raw {
    asio::io_context io;
    tcp::socket socket{io};
    explicit Raw(std::uint16_t port) {
      socket.connect({asio::ip::make_address("127.0.0.1"), port});
    }
    void Send(const std::string& bytes) { asio::write(socket, asio::buffer(bytes)); }
    std::string ReadAll() {
      std::string out;
      boost::system::error_code ec;
      asio::read(socket, asio::dynamic_buffer(out), ec);  // until EOF
      return out;
    }
  };

  asio::io_context io_;
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
};

TEST_F(LoopbackServer, TheCallClientSignsBothSchemesOverTheWire) {
  for (const auto scheme : {SignatureScheme::kV1, SignatureScheme::kAcs3}) {
    for (const char* method : {"GET", "POST"}) {
      const auto req = SignRequest(
          Opts(scheme, method), "UpdateSmartAccessGatewayVersion",
          {{"RegionId", "cn-shanghai"}, {"SmartAGId", "sag-active"}, {"VersionCode", "2.3.1.1"}},
          now_);
      const auto r = SendRequest(Here(), req, milliseconds(3000));
      ASSERT_TRUE(r) << r.error().ToString();
      EXPECT_EQ(r->status, 200) << r->body;
      EXPECT_EQ(CodeOf(*r), "");
    }
  }
  EXPECT_EQ(backend_.Orders().size(), 4U);
  EXPECT_EQ(server_->requests(), 4U);
}

TEST_F(LoopbackServer, ErrorsKeepTheirStatusAndBody) {
  auto o = Opts(SignatureScheme::kAcs3, "POST");
  o.access_key_secret = "wrong";
  const auto r = SendRequest(Here(), SignRequest(o, "DescribeSmartAccessGateways", {}, now_),
                             milliseconds(3000));
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(CodeOf(*r), "SignatureDoesNotMatch");
}

TEST_F(LoopbackServer, KeepAliveServesSeveralRequestsOnOneConnection) {
  Raw raw(server_->port());
  std::string two;
  for (int i = 0; i < 2; ++i) {
    const auto req =
        SignRequest(Opts(SignatureScheme::kV1, "GET"), "DescribeSmartAccessGateways", {}, now_);
    two += "GET " + req.target + " HTTP/1.1\r\nHost: x\r\n" +
           (i == 1 ? "Connection: close\r\n" : "") + "\r\n";
  }
  raw.Send(two);  // pipelined
  const std::string got = raw.ReadAll();
  std::size_t answers = 0;
  for (auto pos = got.find("HTTP/1.1 200 OK"); pos != std::string::npos;
       pos = got.find("HTTP/1.1 200 OK", pos + 1)) {
    ++answers;
  }
  EXPECT_EQ(answers, 2U) << got;
  EXPECT_NE(got.find("Server: sag-cloud"), std::string::npos);
}

TEST_F(LoopbackServer, ABodyAboveTheLimitGetsAnErrorBody) {
  Raw raw(server_->port());
  raw.Send(
      "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
      "Content-Length: 5000\r\n\r\n" +
      std::string(5000, 'a'));
  const std::string got = raw.ReadAll();
  EXPECT_TRUE(got.starts_with("HTTP/1.1 413")) << got;
  EXPECT_NE(got.find("\"Code\":\"RequestTooLarge\""), std::string::npos) << got;
  // Chunked, so no Content-Length to refuse early: the parser's limit.
  Raw chunked(server_->port());
  std::string body;
  for (int i = 0; i < 5; ++i) body += "400\r\n" + std::string(1024, 'b') + "\r\n";
  chunked.Send("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body +
               "0\r\n\r\n");
  EXPECT_TRUE(chunked.ReadAll().starts_with("HTTP/1.1 413"));
}

TEST_F(LoopbackServer, SlowAndBrokenClientsAreClosedWhileOthersAreServed) {
  Raw silent(server_->port());  // connects and says nothing
  Raw half(server_->port());
  half.Send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly a part");
  Raw garbage(server_->port());
  garbage.Send("THIS IS NOT HTTP\r\n\r\n");
  EXPECT_EQ(garbage.ReadAll(), "");  // closed without an answer
  // Served meanwhile.
  const auto r = SendRequest(
      Here(),
      SignRequest(Opts(SignatureScheme::kAcs3, "GET"), "DescribeSmartAccessGateways", {}, now_),
      milliseconds(3000));
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->status, 200);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(silent.ReadAll(), "");
  EXPECT_EQ(half.ReadAll(), "");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3));
}

TEST_F(LoopbackServer, TheClientTimesOutOnASilentServer) {
  // A listener that never answers: connect succeeds, the read times out.
  asio::io_context io;
  tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), 0});
  const auto t0 = std::chrono::steady_clock::now();
  const auto r =
      SendRequest({"127.0.0.1", acceptor.local_endpoint().port(), false, {}},
                  SignRequest(Opts(SignatureScheme::kV1, "GET"), "X", {}, now_), milliseconds(200));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Errc::kTimeout) << r.error().ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
}

TEST_F(RpcFixture, HttpsWithAPinnedCa) {
  sag::test::TempDir dir;
  const auto pki = sag::test::MakeTestPki(dir.path());
  ASSERT_TRUE(pki) << pki.error().ToString();
  auto tls = net::MakeTlsServerContext({pki->server_cert, pki->server_key, {}});
  ASSERT_TRUE(tls) << tls.error().ToString();
  asio::io_context io;
  auto server = HttpServer::Start(io, "127.0.0.1", 0, service_.Handler(), {}, tls->get());
  ASSERT_TRUE(server) << server.error().ToString();
  std::thread t([&] { io.run(); });
  auto ep = *ParseEndpoint("https://127.0.0.1:" + std::to_string((*server)->port()));
  ep.ca_file = pki->ca_cert.string();
  auto o = Options(SignatureScheme::kAcs3, "POST");
  o.host = "127.0.0.1:" + std::to_string(ep.port);
  const auto r =
      SendRequest(ep, SignRequest(o, "DescribeSmartAccessGateways", {}, now_), milliseconds(3000));
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(CodeOf(*r), "");
  // A server whose certificate does not chain to the pinned CA.
  ep.ca_file = pki->rogue_ca_cert.string();
  const auto rogue =
      SendRequest(ep, SignRequest(o, "DescribeSmartAccessGateways", {}, now_), milliseconds(3000));
  ASSERT_FALSE(rogue);
  EXPECT_EQ(rogue.error().code(), Errc::kNetTls) << rogue.error().ToString();
  asio::post(io, [&] { (*server)->Stop(); });
  io.stop();
  t.join();
}

TEST(HttpServerStart, RefusesABadAddress) {
  asio::io_context io;
  const auto r =
      HttpServer::Start(io, "not-an-ip", 0, [](const HttpRequest&) { return HttpResponse{}; });
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Errc::kInvalidArgument);
}

TEST(ParseEndpointTest, HostAndPort) {
  EXPECT_EQ(ParseEndpoint("http://127.0.0.1:8080/")->port, 8080);
  EXPECT_EQ(ParseEndpoint("http://[::1]:81")->host, "::1");
  EXPECT_EQ(ParseEndpoint("http://example.com")->port, 80);
  EXPECT_TRUE(ParseEndpoint("https://x")->tls);
  EXPECT_EQ(ParseEndpoint("https://x")->port, 443);
  EXPECT_FALSE(ParseEndpoint("ftp://x:1"));
  EXPECT_FALSE(ParseEndpoint("http://x:99999"));
  EXPECT_FALSE(ParseEndpoint("http://:80"));
}

}  // namespace
}  // namespace sag::cloud::rpc::test
