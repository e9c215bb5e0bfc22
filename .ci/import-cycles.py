#!/usr/bin/env python3
"""Fails when two modules of src/ import each other, directly or through others.

A module is a file; `crate::a::b` and `super::x` paths count as imports. A parent
module file declaring and using its own children is one module, not a cycle."""
import os,re,sys
root=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src')
files={}
for d,_,fs in os.walk(root):
    for f in fs:
        if f.endswith('.rs'):
            p=os.path.join(d,f); files[os.path.relpath(p,root)]=open(p).read()
def mod_of(path):
    p=path[:-3]
    if p.endswith('/mod'): p=p[:-4]
    if p in ('lib','main'): return ''
    return p.replace('/','::')
modfile={mod_of(p):p for p in files}
def resolve(parts):
    # longest prefix that is a module
    for i in range(len(parts),0,-1):
        m='::'.join(parts[:i])
        if m in modfile: return modfile[m]
    return None
edges={p:set() for p in files}
for p,s in files.items():
    # strip tests
    s=re.split(r'#\[cfg\(test\)\]\s*mod tests', s)[0]
    s=re.sub(r'//.*','',s)
    me=mod_of(p).split('::') if mod_of(p) else []
    for m in re.finditer(r'crate::([a-z_:]+)',s):
        t=resolve(m.group(1).strip(':').split('::'))
        if t and t!=p: edges[p].add(t)
    for m in re.finditer(r'\bsuper::([a-z_:{]+)',s):
        base=me[:-1] if not p.endswith('mod.rs') else me[:-1]
        parts=base+[x for x in m.group(1).strip(':{').split('::') if x]
        t=resolve(parts)
        if t and t!=p: edges[p].add(t)
    for m in re.finditer(r'use super::\{([^}]*)\}',s):
        base=me[:-1]
        for name in m.group(1).split(','):
            name=name.strip().split('::')[0]
            t=resolve(base+[name]) if name else None
            if t and t!=p: edges[p].add(t)
# tarjan
idx={};low={};st=[];on=set();out=[];c=[0]
sys.setrecursionlimit(10000)
def sc(v):
    idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
    for w in edges[v]:
        if w not in idx: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        comp=[]
        while True:
            w=st.pop();on.discard(w);comp.append(w)
            if w==v:break
        if len(comp)>1: out.append(comp)
for v in edges:
    if v not in idx: sc(v)
for comp in out: print('cycle:',sorted(comp))
if not out: print('no import cycles')
sys.exit(1 if out else 0)
