// cuDNN's fused scaled-dot-product attention (the graph API of cudnn-frontend), causal,
// forward only, for the `cudnn` feature: on Hopper it runs the attention of the full
// passes at about 1.5 times the rate of FlashAttention-2's sm80 kernels.
//
// cuDNN is loaded at run time (cudnn-frontend's dynamic loading), so the binary does not
// need cuDNN to start; `gateau_cudnn_load` reports why it cannot be used, and the caller
// falls back to flash attention.
//
// Graphs are built once per shape and cached per thread (a worker is a thread with its own
// device). cuDNN keeps the kernels it compiles, so a new length costs ~50 ms (H100, cuDNN
// 9.19) once the few kernel variants exist. Not used: cudnn-frontend's dynamic shapes with
// a shared kernel cache, which on cuDNN 9.19 returned wrong outputs (inf) for a second
// sequence length.

#include <cudnn_frontend.h>
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

namespace fe = cudnn_frontend;

namespace cudnn_frontend {
void *cudnn_dlhandle = nullptr;
}

extern "C" {
struct GateauSdpa {
    int32_t device;
    int32_t dtype;  // 0 bf16, 1 f16
    int64_t b, t, hq, hkv, d;
    // Element strides of q, k, v and o as [b, h, t, d] (the memory is [b, t, h, d]).
    int64_t q_stride[4], k_stride[4], v_stride[4], o_stride[4];
    float scale;
};
}

namespace {

enum : int64_t { Q_UID = 1, K_UID, V_UID, O_UID };

void set_err(char *err, size_t n, const std::string &msg) {
    if (err && n) {
        std::snprintf(err, n, "%s", msg.c_str());
    }
}

using Key = std::tuple<int32_t, int32_t, int64_t, int64_t, int64_t, int64_t, int64_t, std::string, float>;

std::string strides(const GateauSdpa &s) {
    std::string r;
    for (const int64_t *a : {s.q_stride, s.k_stride, s.v_stride, s.o_stride}) {
        for (int i = 0; i < 4; ++i) {
            r += std::to_string(a[i]) + ",";
        }
    }
    return r;
}

Key key_of(const GateauSdpa &s) {
    return Key{s.device, s.dtype, s.b, s.t, s.hq, s.hkv, s.d, strides(s), s.scale};
}

// Graphs beyond this many shapes are dropped: a run over samples of many lengths would
// otherwise keep one execution plan per length. With `--bucket auto` the single-sequence
// passes of 8k to 128k tokens take at most 4 x 64 + 1 lengths, each reused by every sample
// of its bucket; segment batches (b > 1) bring new shapes with every sample and are
// rarely met again, so they go first (oldest first), then the oldest single sequence.
constexpr size_t MAX_GRAPHS = 320;

struct Cache {
    std::map<int32_t, cudnnHandle_t> handles;
    std::map<Key, std::pair<std::shared_ptr<fe::graph::Graph>, uint64_t>> graphs;
    uint64_t clock = 0;

    ~Cache() {
        graphs.clear();
        for (auto &h : handles) {
            fe::detail::destroy_handle(h.second);
        }
    }
};

Cache &cache() {
    thread_local Cache c;
    return c;
}

std::string fe_error(fe::error_t e) {
    return "cuDNN: " + e.get_message();
}

std::shared_ptr<fe::graph::Graph> build(const GateauSdpa &s, cudnnHandle_t h, std::string &why) {
    auto g = std::make_shared<fe::graph::Graph>();
    auto io = s.dtype == 0 ? fe::DataType_t::BFLOAT16 : fe::DataType_t::HALF;
    g->set_io_data_type(io)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    auto tensor = [&](const char *name, int64_t uid, int64_t heads, const int64_t *stride) {
        return g->tensor(fe::graph::Tensor_attributes()
                             .set_name(name)
                             .set_uid(uid)
                             .set_dim({s.b, heads, s.t, s.d})
                             .set_stride({stride[0], stride[1], stride[2], stride[3]}));
    };
    auto q = tensor("Q", Q_UID, s.hq, s.q_stride);
    auto k = tensor("K", K_UID, s.hkv, s.k_stride);
    auto v = tensor("V", V_UID, s.hkv, s.v_stride);
    auto opts = fe::graph::SDPA_attributes()
                    .set_name("gateau_causal")
                    .set_generate_stats(false)
                    .set_causal_mask(true)
                    .set_attn_scale(s.scale);
    auto out = g->sdpa(q, k, v, opts);
    out[0]
        ->set_output(true)
        .set_uid(O_UID)
        .set_dim({s.b, s.hq, s.t, s.d})
        .set_stride({s.o_stride[0], s.o_stride[1], s.o_stride[2], s.o_stride[3]});
    auto e = g->build(h, {fe::HeurMode_t::A});
    if (e.is_bad()) {
        why = fe_error(e);
        return nullptr;
    }
    return g;
}

// The cached graph for this shape, built on first use; null with `why` on failure.
fe::graph::Graph *graph(const GateauSdpa &s, std::string &why) {
    Cache &c = cache();
    auto it = c.handles.find(s.device);
    if (it == c.handles.end()) {
        cudnnHandle_t h = nullptr;
        if (auto st = fe::detail::create_handle(&h); st != CUDNN_STATUS_SUCCESS) {
            why = "cuDNN: cudnnCreate failed with status " + std::to_string(static_cast<int>(st));
            return nullptr;
        }
        it = c.handles.emplace(s.device, h).first;
    }
    Key key = key_of(s);
    auto found = c.graphs.find(key);
    if (found != c.graphs.end()) {
        found->second.second = ++c.clock;
        return found->second.first.get();
    }
    std::shared_ptr<fe::graph::Graph> g = build(s, it->second, why);
    if (!g) {
        return nullptr;
    }
    if (c.graphs.size() >= MAX_GRAPHS) {
        // The key's third field is b: batches (b > 1) before single sequences, then LRU.
        auto evict_first = [](const auto &a, const auto &b) {
            bool batch_a = std::get<2>(a.first) > 1, batch_b = std::get<2>(b.first) > 1;
            if (batch_a != batch_b) {
                return batch_a;
            }
            return a.second.second < b.second.second;
        };
        auto victim = c.graphs.begin();
        for (auto i = c.graphs.begin(); i != c.graphs.end(); ++i) {
            if (evict_first(*i, *victim)) {
                victim = i;
            }
        }
        c.graphs.erase(victim);
    }
    auto *raw = g.get();
    c.graphs.emplace(key, std::make_pair(std::move(g), ++c.clock));
    return raw;
}

// Runs `body` on the cached graph for this shape: 0, or 1 with the message in `err`
// (cuDNN's errors and any C++ exception, which must not cross into Rust).
template <class Body>
int with_graph(const GateauSdpa &s, char *err, size_t n, Body body) {
    try {
        std::string why;
        auto *g = graph(s, why);
        if (g) {
            why = body(*g);
        } else if (why.empty()) {
            why = "cuDNN: the graph could not be built";
        }
        if (why.empty()) {
            return 0;
        }
        set_err(err, n, why);
    } catch (const std::exception &e) {
        set_err(err, n, std::string("cuDNN: ") + e.what());
    }
    return 1;
}

}  // namespace

extern "C" {

// dlopen cuDNN (`path`, else libcudnn.so.9 from the library path) once per process;
// 0 and the cuDNN version in `version` on success.
int gateau_cudnn_load(const char *path, size_t *version, char *err, size_t n) {
    static std::mutex m;
    std::lock_guard<std::mutex> lock(m);
    if (!fe::cudnn_dlhandle) {
        const char *lib = path && *path ? path : "libcudnn.so.9";
        fe::cudnn_dlhandle = dlopen(lib, RTLD_NOW | RTLD_GLOBAL);
        if (!fe::cudnn_dlhandle) {
            const char *e = dlerror();
            set_err(err, n, std::string("cannot load ") + lib + ": " + (e ? e : "unknown error"));
            return 1;
        }
    }
    try {
        *version = fe::detail::get_backend_version();
    } catch (const std::exception &e) {
        set_err(err, n, e.what());
        return 1;
    }
    return 0;
}

// Builds (or finds) the graph for this shape; its workspace size in bytes.
int gateau_cudnn_sdpa_prepare(const GateauSdpa *s, int64_t *workspace, char *err, size_t n) {
    return with_graph(*s, err, n, [&](fe::graph::Graph &g) -> std::string {
        auto e = g.get_workspace_size(*workspace);
        return e.is_bad() ? fe_error(e) : std::string();
    });
}

// 1 when this thread holds the graph for this shape already (a call would build none).
int gateau_cudnn_sdpa_cached(const GateauSdpa *s) {
    try {
        return cache().graphs.count(key_of(*s)) ? 1 : 0;
    } catch (...) {
        return 0;
    }
}

// Runs the graph prepared for this shape on `stream`.
int gateau_cudnn_sdpa_run(const GateauSdpa *s,
                          void *stream,
                          const void *q,
                          const void *k,
                          const void *v,
                          void *o,
                          void *workspace,
                          char *err,
                          size_t n) {
    return with_graph(*s, err, n, [&](fe::graph::Graph &g) -> std::string {
        cudnnHandle_t h = cache().handles.at(s->device);
        if (auto st = fe::detail::set_stream(h, static_cast<cudaStream_t>(stream)); st != CUDNN_STATUS_SUCCESS) {
            return "cuDNN: cudnnSetStream failed with status " + std::to_string(static_cast<int>(st));
        }
        std::unordered_map<int64_t, void *> pack = {{Q_UID, const_cast<void *>(q)},
                                                    {K_UID, const_cast<void *>(k)},
                                                    {V_UID, const_cast<void *>(v)},
                                                    {O_UID, o}};
        auto e = g.execute(h, pack, workspace);
        return e.is_bad() ? fe_error(e) : std::string();
    });
}
}
