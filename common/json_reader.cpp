#include "common/json_reader.h"

#include <limits>
#include <utility>

namespace sag {

namespace {

using nlohmann::json;

const json& EmptyObject() {
  static const json kEmpty = json::object();
  return kEmpty;
}

bool IsU64(const json& v) {
  return v.is_number_unsigned() || (v.is_number_integer() && v.get<std::int64_t>() >= 0);
}

constexpr auto kI64Max = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());

// is_number_integer() is also true for unsigned values: those above the
// int64 range are not integers to a signed field.
bool IsI64(const json& v) {
  if (v.is_number_unsigned()) return v.get<std::uint64_t>() <= kI64Max;
  return v.is_number_integer();
}

}  // namespace

std::string_view JsonTypeName(const json& value) {
  switch (value.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::object:
      return "object";
    case json::value_t::array:
      return "array";
    case json::value_t::string:
      return "string";
    case json::value_t::boolean:
      return "boolean";
    case json::value_t::number_integer:
      return value.get<std::int64_t>() < 0 ? "negative integer" : "integer";
    case json::value_t::number_unsigned:
      return value.get<std::uint64_t>() > kI64Max ? "integer above 2^63-1" : "integer";
    case json::value_t::number_float:
      return "number with a fraction";
    case json::value_t::binary:
      return "binary";
    case json::value_t::discarded:
      return "invalid value";
  }
  return "unknown";
}

Expected<json> ParseJson(std::string_view text, std::string_view what, Errc code,
                         const JsonLimits& limits) {
  if (text.size() > limits.max_bytes) {
    return Error(code, std::string(what) + ": " + std::to_string(text.size()) +
                           " bytes, more than the " + std::to_string(limits.max_bytes) +
                           " allowed");
  }
  // The parser itself is iterative; the depth cap keeps hostile nesting from
  // costing memory and keeps decoders' recursion (if any) bounded.
  bool too_deep = false;
  const json::parser_callback_t depth_check = [&](int depth, json::parse_event_t /*event*/,
                                                  json& /*parsed*/) {
    if (depth > limits.max_depth) too_deep = true;
    return !too_deep;
  };
  json doc;
  try {
    doc = json::parse(text.begin(), text.end(), depth_check, /*allow_exceptions=*/true);
  } catch (const json::parse_error& e) {
    return Error(code, std::string(what) + ": not valid JSON (" + e.what() + ")");
  }
  if (too_deep) {
    return Error(code, std::string(what) + ": nested deeper than " +
                           std::to_string(limits.max_depth) + " levels");
  }
  return doc;
}

JsonReader::JsonReader(const json& object, std::string what, Errc code)
    : JsonReader(&object, "", std::make_shared<State>(State{code, std::move(what), {}})) {}

JsonReader::JsonReader(const json* object, std::string path, std::shared_ptr<State> state)
    : object_(object), path_(std::move(path)), state_(std::move(state)) {
  if (!object_->is_object()) {
    const std::string where =
        path_.empty() ? std::string("document") : path_.substr(0, path_.size() - 1);
    if (!state_->first) {
      state_->first =
          Error(state_->code, state_->what + ": " + where + ": expected an object, got " +
                                  std::string(JsonTypeName(*object_)));
    }
    object_ = &EmptyObject();
  }
}

std::string JsonReader::PathOf(std::string_view key) const { return path_ + std::string(key); }

void JsonReader::Fail(std::string_view key, std::string_view problem) {
  if (state_->first) return;
  state_->first =
      Error(state_->code, state_->what + ": " + PathOf(key) + ": " + std::string(problem));
}

Status JsonReader::Finish() const {
  if (state_->first) return *state_->first;
  return Ok();
}

const json* JsonReader::Raw(std::string_view key) const {
  const auto it = object_->find(key);
  return it == object_->end() ? nullptr : &*it;
}

bool JsonReader::Has(std::string_view key) const {
  const json* v = Raw(key);
  return v != nullptr && !v->is_null();
}

const json* JsonReader::Get(std::string_view key, bool required,
                            const std::function<bool(const json&)>& is,
                            std::string_view type_name) {
  const json* v = Raw(key);
  if (v == nullptr || v->is_null()) {
    if (required) Fail(key, "missing (expected " + std::string(type_name) + ")");
    return nullptr;
  }
  if (!is(*v)) {
    Fail(key, "expected " + std::string(type_name) + ", got " + std::string(JsonTypeName(*v)));
    return nullptr;
  }
  return v;
}

std::string JsonReader::Str(std::string_view key) {
  const json* v = Get(key, true, &json::is_string, "a string");
  return v != nullptr ? v->get<std::string>() : std::string();
}

std::string JsonReader::Str(std::string_view key, std::string def) {
  const json* v = Get(key, false, &json::is_string, "a string");
  return v != nullptr ? v->get<std::string>() : std::move(def);
}

std::optional<std::string> JsonReader::OptStr(std::string_view key) {
  const json* v = Get(key, false, &json::is_string, "a string");
  if (v == nullptr) return std::nullopt;
  return v->get<std::string>();
}

bool JsonReader::Bool(std::string_view key) {
  const json* v = Get(key, true, &json::is_boolean, "a boolean");
  return v != nullptr && v->get<bool>();
}

bool JsonReader::Bool(std::string_view key, bool def) {
  const json* v = Get(key, false, &json::is_boolean, "a boolean");
  return v != nullptr ? v->get<bool>() : def;
}

std::uint64_t JsonReader::U64(std::string_view key) {
  const json* v = Get(key, true, IsU64, "an unsigned integer");
  return v != nullptr ? v->get<std::uint64_t>() : 0;
}

std::uint64_t JsonReader::U64(std::string_view key, std::uint64_t def) {
  const json* v = Get(key, false, IsU64, "an unsigned integer");
  return v != nullptr ? v->get<std::uint64_t>() : def;
}

std::optional<std::uint64_t> JsonReader::OptU64(std::string_view key) {
  const json* v = Get(key, false, IsU64, "an unsigned integer");
  if (v == nullptr) return std::nullopt;
  return v->get<std::uint64_t>();
}

std::int64_t JsonReader::I64(std::string_view key) {
  const json* v = Get(key, true, IsI64, "an integer");
  return v != nullptr ? v->get<std::int64_t>() : 0;
}

std::int64_t JsonReader::I64(std::string_view key, std::int64_t def) {
  const json* v = Get(key, false, IsI64, "an integer");
  return v != nullptr ? v->get<std::int64_t>() : def;
}

double JsonReader::Num(std::string_view key) {
  const json* v = Get(key, true, &json::is_number, "a number");
  return v != nullptr ? v->get<double>() : 0.0;
}

JsonReader JsonReader::Obj(std::string_view key) {
  const json* v = Get(key, true, &json::is_object, "an object");
  return {v != nullptr ? v : &EmptyObject(), PathOf(key) + ".", state_};
}

std::optional<JsonReader> JsonReader::OptObj(std::string_view key) {
  const json* v = Get(key, false, &json::is_object, "an object");
  if (v == nullptr) return std::nullopt;
  return JsonReader(v, PathOf(key) + ".", state_);
}

std::vector<std::string> JsonReader::StrList(std::string_view key, std::size_t max_items,
                                             bool required) {
  std::vector<std::string> out;
  const json* v = Get(key, required, &json::is_array, "an array of strings");
  if (v == nullptr) return out;
  if (v->size() > max_items) {
    Fail(key, std::to_string(v->size()) + " items, more than the " + std::to_string(max_items) +
                  " allowed");
    return out;
  }
  out.reserve(v->size());
  for (std::size_t i = 0; i < v->size(); ++i) {
    const json& item = (*v)[i];
    if (!item.is_string()) {
      Fail(std::string(key) + "[" + std::to_string(i) + "]",
           "expected a string, got " + std::string(JsonTypeName(item)));
      return {};
    }
    out.push_back(item.get<std::string>());
  }
  return out;
}

std::vector<JsonReader> JsonReader::ObjList(std::string_view key, std::size_t max_items,
                                            bool required) {
  std::vector<JsonReader> out;
  const json* v = Get(key, required, &json::is_array, "an array of objects");
  if (v == nullptr) return out;
  if (v->size() > max_items) {
    Fail(key, std::to_string(v->size()) + " items, more than the " + std::to_string(max_items) +
                  " allowed");
    return out;
  }
  out.reserve(v->size());
  for (std::size_t i = 0; i < v->size(); ++i) {
    out.push_back(JsonReader(&(*v)[i], PathOf(key) + "[" + std::to_string(i) + "].", state_));
  }
  return out;
}

void JsonReader::OnlyKeys(std::initializer_list<std::string_view> known) {
  for (const auto& [name, value] : object_->items()) {
    bool found = false;
    for (const auto k : known) found = found || k == name;
    if (!found) {
      std::string list;
      for (const auto k : known) list += (list.empty() ? "" : ", ") + std::string(k);
      Fail(name, "unknown field (known: " + list + ")");
      return;
    }
  }
}

}  // namespace sag
