# The peerpull image the Helm chart runs (ENTRYPOINT is the CLI; the chart passes `serve`,
# `configure` or `cleanup`). Not built in CI here (no Docker engine on the build machines).
FROM node:22-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
COPY test ./test
COPY native-bench ./native-bench
RUN npx tsc -p tsconfig.json

FROM node:22-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
# The pinned `node` package (a devDependency) is for development machines; the base has Node 22.
RUN npm ci --omit=dev --no-audit --no-fund
COPY --from=build /app/dist/src ./dist/src
# containerd's API protos are read at run time from the source tree.
COPY src/main/containerd/proto ./src/main/containerd/proto
USER 0
ENTRYPOINT ["node", "/app/dist/src/main/cli.js"]
CMD ["serve"]
