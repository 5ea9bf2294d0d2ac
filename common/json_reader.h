// Checked JSON decoding for everything the agent and the cloud read: their own
// state files, inbox requests, channel messages, API answers. A corrupt
// document, a missing key or a value of the wrong type is an Error with a code
// and the path of the field ("inbox request x.json: allow_downgrade: expected
// a boolean, got string"), never an exception.
//
// A decoder is a flat list of fields, like a schema:
//
//   JsonReader r(doc, "inbox request x.json", Errc::kInvalidArgument);
//   spec.id = r.Str("id");                        // required
//   spec.allow_downgrade = r.Bool("allow_downgrade", false);  // optional
//   SAG_TRY_STATUS(r.Finish());                   // the first problem, if any
//
// Getters never throw: after a problem they return the default (or an empty
// value) and Finish() reports the first problem.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace sag {

struct JsonLimits {
  std::size_t max_bytes = 1U << 20U;  // text longer than this is refused before parsing
  int max_depth = 32;                 // objects and arrays nested deeper are refused
};

// Parses `text` as one JSON value; `what` names it in messages ("journal
// /var/lib/sag-agent/device-job.json"). Errors carry `code`.
Expected<nlohmann::json> ParseJson(std::string_view text, std::string_view what, Errc code,
                                   const JsonLimits& limits = {});

// The JSON type of a value as messages name it: "string", "unsigned integer", ...
std::string_view JsonTypeName(const nlohmann::json& value);

class JsonReader {
 public:
  // Reads fields of `object`, which must outlive the reader; when it is not an
  // object, that is the first problem. `what` prefixes every message.
  JsonReader(const nlohmann::json& object, std::string what, Errc code);

  // Required fields: absent or of another type is a problem.
  std::string Str(std::string_view key);
  bool Bool(std::string_view key);
  std::uint64_t U64(std::string_view key);
  std::int64_t I64(std::string_view key);
  double Num(std::string_view key);
  // Optional fields: absent or null gives the default; another type is a problem.
  std::string Str(std::string_view key, std::string def);
  bool Bool(std::string_view key, bool def);
  std::uint64_t U64(std::string_view key, std::uint64_t def);
  std::int64_t I64(std::string_view key, std::int64_t def);
  std::optional<std::string> OptStr(std::string_view key);
  std::optional<std::uint64_t> OptU64(std::string_view key);

  // A nested object (required, or optional: absent/null gives nullopt). Its
  // problems are this reader's problems, with the path "key.field".
  JsonReader Obj(std::string_view key);
  std::optional<JsonReader> OptObj(std::string_view key);
  // An array of strings, or of objects, with at most `max_items` items.
  std::vector<std::string> StrList(std::string_view key, std::size_t max_items,
                                   bool required = true);
  std::vector<JsonReader> ObjList(std::string_view key, std::size_t max_items,
                                  bool required = true);
  // The raw value, or nullptr when absent (no type check).
  [[nodiscard]] const nlohmann::json* Raw(std::string_view key) const;
  [[nodiscard]] bool Has(std::string_view key) const;

  // Strict schemas (files the agent's own user writes, like inbox requests):
  // any key not in `known` is a problem. Messages from a peer ignore unknown
  // keys instead (forward compatibility), so this is opt-in.
  void OnlyKeys(std::initializer_list<std::string_view> known);

  // Records a problem found by the caller's own validation of `key`
  // ("state: unknown state 'Foo'"); the first problem wins.
  void Fail(std::string_view key, std::string_view problem);

  [[nodiscard]] bool ok() const { return !state_->first.has_value(); }
  // Ok, or the first problem as Error(code, "what: path: problem").
  [[nodiscard]] Status Finish() const;

 private:
  struct State {
    Errc code;
    std::string what;
    std::optional<Error> first;
  };
  JsonReader(const nlohmann::json* object, std::string path, std::shared_ptr<State> state);
  // The member `key` if it is present and not null, checking its type with
  // `is`; records "expected <type_name>" otherwise (when required or present).
  const nlohmann::json* Get(std::string_view key, bool required,
                            const std::function<bool(const nlohmann::json&)>& is,
                            std::string_view type_name);
  [[nodiscard]] std::string PathOf(std::string_view key) const;

  const nlohmann::json* object_;
  std::string path_;  // "" at the top, "job." below it
  std::shared_ptr<State> state_;
};

}  // namespace sag
