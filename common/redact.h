// Redaction of secrets in URLs before they are shown or stored.
//
// Image URLs are often signed (OSS/S3 style: the signature and its expiry in
// the query string) and may carry userinfo; either grants access to the image
// to whoever reads it. status.json is world-readable, logs go to the journal,
// job history and error messages travel to the cloud: everything the agent
// shows or stores outside its own journal gets URLs through these functions,
// which keep the scheme, host and path (a person can still tell which file a
// job used) and replace the secrets by "<redacted>".
#pragma once

#include <string>
#include <string_view>

namespace sag {

// One URL ("scheme://..."): the userinfo becomes "<redacted>@", the query and
// the fragment together become "?<redacted>":
//   "https://user:pw@host/p/f.img?Expires=1&Signature=x"
//     -> "https://<redacted>@host/p/f.img?<redacted>"
// Text without "://" (a file path) is returned unchanged.
std::string RedactUrl(std::string_view url);

// Every URL inside free text (an error message, a log line, a JSON string)
// redacted as RedactUrl does. A URL starts at its scheme (a letter, then
// letters, digits, + - .) and ends at white space, a control character or a
// character that cannot be in a URL and delimits one in prose or JSON
// ("'<>`\{}|^). Everything else, ')' and ',' included, is taken for part of
// the URL: erring long hides more, never less.
std::string RedactUrls(std::string_view text);

}  // namespace sag
