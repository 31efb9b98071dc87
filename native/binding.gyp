{
  "targets": [
    {
      "target_name": "membrane",
      "sources": [
        "src/addon.c",
        "src/util.c",
        "src/bpf_obj.c",
        "src/bpf_map.c",
        "src/bpf_link.c",
        "src/bpf_prog.c",
        "src/btf.c",
        "src/ringbuf.c",
        "src/ringbuf_thread.c",
        "src/netns.c",
        "src/netlink.c",
        "src/sock.c"
      ],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers", "-std=gnu11"],
      "libraries": ["-lbpf", "-lelf", "-lz"]
    }
  ]
}
