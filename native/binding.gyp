{
  "targets": [
    {
      "target_name": "softroce_native",
      "sources": ["softroce.cc", "fast-tx.cc", "fast-rx.cc", "crc32.cc", "place-rx.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-O2", "-std=c++17"]
    }
  ]
}
