// dockcast adapter for Agora: joins the channel named by the DJI live_start_push url and
// publishes the H.264 access units dockcast writes on stdin, without re-encoding.
//
// Why it exists: Agora's media transport ships only as native SDKs, so dockcast hands the
// stream to this process instead of speaking Agora itself. The contract (stdin framing,
// DOCKCAST_* environment, status lines on stdout) is board/adapters/FRAMING.md.
//
// NOT BUILT OR RUN in the dockcast repository: the SDK cannot be downloaded there. The calls
// follow the "send encoded H.264" sample of Agora's Linux server SDK; check them against the
// headers of the SDK version you build with (see README.md beside this file).
//
// Environment:
//   AGORA_APP_ID      required; the App ID the cloud's tokens are issued for (not in the url)
//   DOCKCAST_CHANNEL  channel to join           (from the url)
//   DOCKCAST_TOKEN    RTC token, already decoded (from the url; never printed)
//   DOCKCAST_UID      numeric uid to join as    (from the url)
//   DOCKCAST_FRAMING  must be "framed"
//   AGORA_LOG_DIR     optional; where the SDK writes its own log

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include <unistd.h>

#include "AgoraBase.h"
#include "IAgoraService.h"
#include "NGIAgoraLocalUser.h"
#include "NGIAgoraMediaNodeFactory.h"
#include "NGIAgoraRtcConnection.h"
#include "NGIAgoraVideoTrack.h"

namespace {

// One status line on stdout, flushed: dockcast reads them as they come.
void status(const char* event, const std::string& message = std::string()) {
    if (message.empty()) {
        std::printf("{\"event\":\"%s\"}\n", event);
    } else {
        std::string escaped;
        for (char c : message) {
            if (c == '"' || c == '\\') escaped.push_back('\\');
            if (static_cast<unsigned char>(c) >= 0x20) escaped.push_back(c);
        }
        std::printf("{\"event\":\"%s\",\"message\":\"%s\"}\n", event, escaped.c_str());
    }
    std::fflush(stdout);
}

std::string env(const char* name) {
    const char* v = std::getenv(name);
    return v ? std::string(v) : std::string();
}

// Reads exactly n bytes; false at EOF (dockcast closed stdin: time to leave).
bool read_exact(uint8_t* buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = ::read(0, buf + got, n - got);
        if (r == 0) return false;
        if (r < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        got += static_cast<size_t>(r);
    }
    return true;
}

uint64_t be64(const uint8_t* p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
    return v;
}

uint32_t be32(const uint8_t* p) {
    return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3];
}

// Connection state from the SDK's callbacks, so main can wait for the join and report
// "publishing" only when the channel really took us.
class ConnectionObserver : public agora::rtc::IRtcConnectionObserver {
 public:
    void onConnected(const agora::rtc::TConnectionInfo&,
                     agora::rtc::CONNECTION_CHANGED_REASON_TYPE) override {
        std::lock_guard<std::mutex> lock(mu_);
        connected_ = true;
        cv_.notify_all();
    }
    void onDisconnected(const agora::rtc::TConnectionInfo&,
                        agora::rtc::CONNECTION_CHANGED_REASON_TYPE reason) override {
        status("error", "disconnected from channel, reason " + std::to_string(int(reason)));
        lost_ = true;
    }
    void onConnectionFailure(const agora::rtc::TConnectionInfo&,
                             agora::rtc::CONNECTION_CHANGED_REASON_TYPE reason) override {
        status("error", "connection failed, reason " + std::to_string(int(reason)));
        lost_ = true;
        cv_.notify_all();
    }
    void onTokenPrivilegeWillExpire(const char*) override {
        // The cloud issues a new token with a new live_start_push; nothing to renew here.
        status("error", "token will expire soon");
    }
    void onTokenPrivilegeDidExpire() override {
        status("error", "token expired");
        lost_ = true;
    }
    // The remaining callbacks are not needed by a publisher.
    void onConnecting(const agora::rtc::TConnectionInfo&,
                      agora::rtc::CONNECTION_CHANGED_REASON_TYPE) override {}
    void onReconnecting(const agora::rtc::TConnectionInfo&,
                        agora::rtc::CONNECTION_CHANGED_REASON_TYPE) override {}
    void onReconnected(const agora::rtc::TConnectionInfo&,
                       agora::rtc::CONNECTION_CHANGED_REASON_TYPE) override {}
    void onLostTimeout() override { lost_ = true; }
    void onConnectionLicenseValidationFailure() override {}
    void onUserJoined(agora::user_id_t) override {}
    void onUserLeft(agora::user_id_t, agora::rtc::USER_OFFLINE_REASON_TYPE) override {}
    void onTransportStats(const agora::rtc::RtcStats&) override {}
    void onChangeRoleSuccess(agora::rtc::CLIENT_ROLE_TYPE, agora::rtc::CLIENT_ROLE_TYPE) override {}
    void onChangeRoleFailure() override {}
    void onUserNetworkQuality(agora::user_id_t, int, int) override {}
    void onApiCallExecuted(int, const char*, const char*) override {}
    void onError(agora::ERROR_CODE_TYPE error, const char*) override {
        status("error", "sdk error " + std::to_string(int(error)));
    }
    void onWarning(agora::WARN_CODE_TYPE, const char*) override {}
    void onChannelMediaRelayStateChanged(int, int) override {}

    bool wait_connected(std::chrono::milliseconds limit) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_for(lock, limit, [&] { return connected_ || lost_.load(); });
        return connected_;
    }
    bool lost() const { return lost_; }

 private:
    std::mutex mu_;
    std::condition_variable cv_;
    bool connected_ = false;
    std::atomic<bool> lost_{false};
};

}  // namespace

int main() {
    const std::string app_id = env("AGORA_APP_ID");
    const std::string channel = env("DOCKCAST_CHANNEL");
    const std::string token = env("DOCKCAST_TOKEN");
    const std::string uid = env("DOCKCAST_UID");
    if (app_id.empty() || channel.empty() || token.empty() || uid.empty()) {
        status("error", "AGORA_APP_ID, DOCKCAST_CHANNEL, DOCKCAST_TOKEN and DOCKCAST_UID are required");
        return 2;
    }
    if (env("DOCKCAST_FRAMING") != "framed") {
        status("error", "configure this adapter with framing = \"framed\"");
        return 2;
    }

    agora::base::IAgoraService* service = createAgoraService();
    agora::base::AgoraServiceConfiguration scfg;
    scfg.appId = app_id.c_str();
    scfg.enableAudioDevice = false;
    scfg.enableAudioProcessor = false;
    scfg.enableVideo = true;
    scfg.useStringUid = false;
    if (!service || service->initialize(scfg) != agora::ERR_OK) {
        status("error", "cannot initialise the Agora service (App ID?)");
        return 1;
    }
    const std::string log_dir = env("AGORA_LOG_DIR");
    if (!log_dir.empty()) service->setLogFile((log_dir + "/agora.log").c_str(), 1024 * 1024);

    agora::rtc::RtcConnectionConfiguration ccfg;
    ccfg.autoSubscribeAudio = false;
    ccfg.autoSubscribeVideo = false;
    ccfg.clientRoleType = agora::rtc::CLIENT_ROLE_BROADCASTER;
    agora::agora_refptr<agora::rtc::IRtcConnection> connection = service->createRtcConnection(ccfg);
    ConnectionObserver observer;
    connection->registerObserver(&observer);
    if (connection->connect(token.c_str(), channel.c_str(), uid.c_str()) != 0) {
        status("error", "connect refused by the SDK");
        return 1;
    }

    agora::agora_refptr<agora::rtc::IMediaNodeFactory> factory = service->createMediaNodeFactory();
    agora::agora_refptr<agora::rtc::IVideoEncodedImageSender> sender =
        factory->createVideoEncodedImageSender();
    agora::base::SenderOptions options;
    options.ccMode = agora::base::CC_ENABLED;  // let Agora's congestion control see the sender
    agora::agora_refptr<agora::rtc::ILocalVideoTrack> track =
        service->createCustomVideoTrack(sender, options);
    track->setEnabled(true);
    connection->getLocalUser()->publishVideo(track);

    if (!observer.wait_connected(std::chrono::seconds(10))) {
        status("error", "channel join timed out");
        return 1;
    }
    status("publishing");

    // Read DCAU records until EOF (dockcast stopping us) or a broken stream.
    std::vector<uint8_t> payload;
    uint8_t h[20];
    uint64_t sent = 0;
    while (!observer.lost() && read_exact(h, sizeof h)) {
        if (std::memcmp(h, "DCAU", 4) != 0 || h[4] != 1) {
            status("error", "stdin is not DCAU version 1 framing");
            break;
        }
        const bool key = (h[5] & 1) != 0;
        const uint8_t codec = h[6];
        const uint64_t pts_us = be64(h + 8);
        const uint32_t len = be32(h + 16);
        if (len > 32u * 1024 * 1024) {
            status("error", "record length over 32 MiB");
            break;
        }
        payload.resize(len);
        if (!read_exact(payload.data(), len)) break;

        agora::rtc::EncodedVideoFrameInfo info;
        info.codecType = codec == 2 ? agora::rtc::VIDEO_CODEC_H265 : agora::rtc::VIDEO_CODEC_H264;
        info.frameType = key ? agora::rtc::VIDEO_FRAME_TYPE_KEY_FRAME
                             : agora::rtc::VIDEO_FRAME_TYPE_DELTA_FRAME;
        info.rotation = agora::rtc::VIDEO_ORIENTATION_0;
        info.framesPerSecond = 30;  // informative; the SDK paces by arrival
        info.captureTimeMs = static_cast<int64_t>(pts_us / 1000);
        sender->sendEncodedVideoImage(payload.data(), payload.size(), info);
        if (++sent % 300 == 0) {
            std::printf("{\"event\":\"stats\",\"frames\":%llu}\n",
                        static_cast<unsigned long long>(sent));
            std::fflush(stdout);
        }
    }

    connection->getLocalUser()->unpublishVideo(track);
    connection->disconnect();
    track = nullptr;
    sender = nullptr;
    factory = nullptr;
    connection = nullptr;
    service->release();
    return observer.lost() ? 1 : 0;
}
