// Command etcd is upstream etcd's server entry point. `go install
// go.etcd.io/etcd/server/v3` does not work because etcd's own go.mod replaces
// its sibling modules with local paths, so we wrap etcdmain here.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
